"""Regenerate tests/fixtures/golden_sweep: a small real sweep made by the project's runner.

    .venv/bin/python scripts/make_golden_fixture.py

Then regenerate the expected tables (tests/fixtures/golden_expected) with
    .venv/bin/python scripts/make_golden_fixture.py --expected-only
and check them by hand before committing: the golden test compares them exactly.

The sweep: the test-only dataset golden_toy (3 environments with a val split; every
environment as the test env, and every pair, so leave-one-environment-out has its
helper runs), 2 hyperparameter draws (0 = defaults, 1) x 3 trials; linear_sem (no val
split: only the last checkpoint selects) with 2 trials; and one run killed halfway
(done.json removed), which collection leaves out and counts. checkpoint.pt files are
dropped to keep the fixture small.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
from pathlib import Path

from invbench.results.selection import SELECTIONS

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SWEEP = FIXTURES / "golden_sweep"
EXPECTED = FIXTURES / "golden_expected"
METHODS = ("erm", "irm", "vrex", "groupdro")  # those registered when the fixture is made
FORMATS = {"md": "md", "latex": "tex", "csv": "csv"}


def golden_specs():
    from invbench.registry import METHODS as REGISTRY
    from invbench.spec import make_spec

    methods = [m for m in METHODS if m in REGISTRY]
    test_sets = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    for method, tests, hp, trial in itertools.product(methods, test_sets, (0, 1), (0, 1, 2)):
        yield make_spec("golden_toy", method, test_envs=tests, trial=trial, hparams_seed=hp,
                        overrides={"batch_size": 0}, steps=20, eval_every=10, device="cpu")
    for method, trial in itertools.product(methods, (0, 1)):
        yield make_spec("linear_sem", method, dataset_options={"n_per_env": 200}, trial=trial, steps=20,
                        eval_every=10, device="cpu")


def killed_spec():
    from invbench.spec import make_spec

    return make_spec("golden_toy", "erm", test_envs=(0,), trial=3, overrides={"batch_size": 0}, steps=20,
                     eval_every=10, device="cpu")


def make_sweep(out: Path) -> None:
    from invbench.runner import run

    for spec in golden_specs():
        run(spec, out)
    killed = run(killed_spec(), out)
    (killed / "done.json").unlink()
    lines = (killed / "metrics.jsonl").read_text().splitlines(keepends=True)
    (killed / "metrics.jsonl").write_text("".join(lines[:2]))
    # Not read by collection: dropped to keep the fixture small (checkpoints are ~MBs).
    for pattern in ("checkpoint.pt", "timing.jsonl", "lock"):
        for path in out.rglob(pattern):
            path.unlink()


def write_expected(sweep: Path, expected: Path) -> None:
    from invbench.results.aggregate import collect
    from invbench.results.render import render

    expected.mkdir(parents=True, exist_ok=True)
    for selection in SELECTIONS:
        board = collect(sweep, selection)
        for fmt, suffix in FORMATS.items():
            (expected / f"{selection}.{suffix}").write_text(render(board, fmt))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expected-only", action="store_true", help="only rewrite the expected tables")
    args = parser.parse_args()
    sys.path.insert(0, str(FIXTURES))
    import golden_toy  # noqa: F401  (registers the dataset)

    if not args.expected_only:
        if SWEEP.exists():
            shutil.rmtree(SWEEP)
        make_sweep(SWEEP)
    write_expected(SWEEP, EXPECTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
