"""Every registered method on every registered dataset: a few steps, an interruption, a resume.

Parametrised over the registries, so a new method or dataset cannot land without running
here: each pair trains through the runner with tiny data, its records are checked (every
evaluation step, every environment and split, finite numbers, the done record), and a run
killed right after its first checkpoint and resumed writes the same bytes as the
uninterrupted one.
"""

import json
import math
import warnings

import pytest

import invbench.runner as runner
from test_resume_methods import interrupted_then_resumed
from idx_helpers import write_dataset
from invbench.registry import DATASETS, METHODS
from invbench.runner import DONE, load_records, run
from invbench.spec import make_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS, EVAL_EVERY = 6, 3
INTERRUPT_AT = 3

# Tiny data for each dataset: the option that makes it small, and a narrow MLP where it has one.
SMALL = {"n_per_env": 40, "image_size": 7}
NARROW = {"hidden_dim": 16}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Hand-made MNIST and Fashion-MNIST (the latter brighter, as the real one is) in one folder."""
    root = tmp_path_factory.mktemp("images")
    write_dataset(root, 600, 120, layout="MNIST/raw")
    write_dataset(root, 600, 120, layout="FashionMNIST/raw", fill=100)
    return str(root)


def tiny_spec(dataset, method, data_dir):
    family = DATASETS.get(dataset)
    options = {k: v for k, v in SMALL.items() if k in family.options}
    base = make_spec(dataset, method, dataset_options=options, data_dir=data_dir, device="cpu")
    overrides = {k: v for k, v in NARROW.items() if k in base.hparams}
    # every schedule switches inside the run (and its optimizer reset with it)
    overrides.update({k: 2 for k in base.hparams if k.endswith("anneal_iters")})
    if base.hparams.get("batch_size"):
        overrides["batch_size"] = 8
    return make_spec(dataset, method, dataset_options=options, data_dir=data_dir, steps=STEPS,
                     eval_every=EVAL_EVERY, overrides=overrides, device="cpu")


def check_records(run_dir, spec, env_names):
    records = load_records(run_dir)
    assert [r["step"] for r in records] == [0, 3, 6]
    for record in records:
        assert sorted(record["envs"]) == sorted(env_names)
        for env, splits in record["envs"].items():
            assert splits, env
            for split, metrics in splits.items():
                assert all(math.isfinite(v) for v in metrics.values()), (env, split, metrics)
        if record["step"] > 0:
            assert math.isfinite(record["train"]["loss"]), record["train"]
    done = json.loads((run_dir / DONE).read_text())
    assert done["steps"] == STEPS and done["run_id"] == spec.run_id


def shipped(registry, package):
    """The registered names whose class lives in the package (not a test's own registrations)."""
    return [name for name in registry.names() if registry.get(name).__module__.startswith(package + ".")]


METHOD_NAMES = shipped(METHODS, "invbench.methods")
DATASET_NAMES = shipped(DATASETS, "invbench.datasets")
PAIRS = [(m, d) for m in METHOD_NAMES for d in DATASET_NAMES]


@pytest.mark.parametrize("method, dataset", PAIRS, ids=[f"{m}-{d}" for m, d in PAIRS])
def test_every_method_trains_and_resumes_on_every_dataset(method, dataset, image_dir, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a foreign protocol's warning is not this test's subject
        spec = tiny_spec(dataset, method, image_dir)
    full = run(spec, tmp_path / "full")
    env_names = DATASETS.get(dataset).env_names(spec.dataset_options)
    check_records(full, spec, env_names)
    resumed = interrupted_then_resumed(spec, tmp_path / "resumed", monkeypatch, at=INTERRUPT_AT)
    assert (resumed / runner.METRICS).read_bytes() == (full / runner.METRICS).read_bytes()


def test_the_pairs_cover_every_method_and_dataset():
    # the parametrisation is read from the registries at collection: nothing hand-listed
    assert set(METHOD_NAMES) == set(shipped(METHODS, "invbench.methods")) and len(METHOD_NAMES) >= 13
    assert set(DATASET_NAMES) == set(shipped(DATASETS, "invbench.datasets")) and len(DATASET_NAMES) >= 11
