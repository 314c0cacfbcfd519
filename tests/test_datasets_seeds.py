"""The data seed alone decides the data: in a new process, for every method and hyperparameter draw."""

from __future__ import annotations

import json
import subprocess
import sys

from idx_helpers import write_dataset

# Run both here and in a fresh interpreter: digests of every tensor the runner would train on.
DIGESTS = r'''
import hashlib, json, sys
from invbench.registry import METHODS
from invbench.runner import build_dataset
from invbench.spec import make_spec

def digest(spec):
    h = hashlib.sha256()
    for env in build_dataset(spec).envs:
        for split, (x, y) in sorted(env.splits.items()):
            h.update(f"{env.name}/{split}".encode())
            h.update(x.contiguous().numpy().tobytes())
            h.update(y.contiguous().numpy().tobytes())
    return h.hexdigest()

def digests(data_dir, cases):
    methods = [m for m in ("erm", "irm", "vrex", "groupdro", "mmrex") if m in METHODS]
    draws = [("erm", 0)] + [(m, 7) for m in methods]  # the defaults, then a random draw of each
    return {f"{d}|{m}|{hp}": digest(make_spec(d, m, dataset_options=o, trial=3, hparams_seed=hp, data_dir=data_dir))
            for d, o in cases for m, hp in draws}
'''

CASES = [
    ("linear_sem", {"n_per_env": 200, "scramble": True}),
    ("example3s", {"n_per_env": 200}),
    ("example1", {"n_per_env": 200, "n_envs": 4}),
    ("cmnist_irm", {}),
    ("cmnist_domainbed", {}),
]


def test_same_data_seed_same_data_in_a_new_process_for_every_method_and_draw(tmp_path):
    write_dataset(tmp_path, 600, 100)
    namespace: dict = {}
    exec(DIGESTS, namespace)
    here = namespace["digests"](str(tmp_path), CASES)
    script = DIGESTS + f"\nprint(json.dumps(digests({str(tmp_path)!r}, {CASES!r})))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    there = json.loads(out.stdout)
    assert there == here
    for dataset, _ in CASES:
        per_dataset = {v for k, v in here.items() if k.startswith(dataset + "|")}
        assert len(per_dataset) == 1, f"{dataset}: the data changed with the method or the draw"


def test_another_data_seed_gives_other_data(tmp_path):
    write_dataset(tmp_path, 600, 100)
    namespace: dict = {}
    exec(DIGESTS, namespace)
    from invbench.spec import make_spec

    for dataset, options in CASES:
        a, b = (namespace["digest"](make_spec(dataset, "erm", dataset_options=options, trial=t, data_dir=str(tmp_path)))
                for t in (0, 1))
        assert a != b, dataset
