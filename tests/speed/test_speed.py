"""Speed regression benchmarks (pytest-benchmark): one training step per method and dataset
(the engine's shared step, alone and in a pack of 64 for the linear datasets), and the
launcher's per-run overhead.

Skipped by `make test` (addopts has --benchmark-skip). `make bench` runs them and compares
with the baseline stored under results/baselines/speed (fails when a mean gets 25 % slower);
`make bench-save` stores a new baseline. Timings are machine-specific: pytest-benchmark
keeps one folder per machine signature, and a baseline is only meaningful on the machine
that saved it.
"""

from __future__ import annotations

import pytest

METHODS = ("erm", "irm", "vrex", "mmrex", "groupdro")
# Cheap synthetic ones, and the IRM / DomainBed protocols on real data available offline
# (Debian's Fashion-MNIST); a dataset whose data cannot be found is skipped.
DATASETS = ("linear_sem", "example2", "cfmnist_irm", "cfmnist_domainbed")


# one intra-op thread: timings that do not depend on what else the machine runs
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Datasets whose model is linear: their steps are mostly per-call overhead, which a pack of
# PACK runs shares (time per run-step in extra_info).
LINEAR_DATASETS = ("linear_sem", "example2")
PACK = 64


def _pack_specs(dataset_name: str, method_name: str, runs: int) -> list:
    """``runs`` compatible specs of one pack: run r is trial r with hyperparameter draw r (as
    a sweep's packs mix data seeds and draws); a dataset whose data cannot be found is skipped."""
    from invbench.errors import DataUnavailableError
    from invbench.packing import pack_key
    from invbench.spec import make_spec

    specs = [make_spec(dataset_name, method_name, trial=r, hparams_seed=r, device="cpu") for r in range(runs)]
    specs = [spec for spec in specs if pack_key(spec) == pack_key(specs[0])]
    if len(specs) < runs:  # a draw that changes a shared hyperparameter: fill with the defaults
        specs += [make_spec(dataset_name, method_name, trial=r, device="cpu") for r in range(len(specs), runs)]
    try:
        from invbench.runner import build_dataset

        build_dataset(specs[0])
    except DataUnavailableError as exc:
        pytest.skip(f"{dataset_name}: {exc}")
    return specs


def _trainer_step(dataset_name: str, method_name: str, runs: int = 1):
    """The engine's own step (invbench.trainer.train_step via Trainer.step: objective, l2,
    penalty, divisor, backward, packed Adam) on a pack of ``runs`` specs, after one warm-up."""
    from invbench.trainer import Trainer

    trainer = Trainer(_pack_specs(dataset_name, method_name, runs))
    trainer.step()
    return trainer


def _skip_unregistered(dataset: str, method: str) -> None:
    from invbench.registry import DATASETS as DATA, METHODS as REGISTRY

    if method not in REGISTRY or dataset not in DATA:
        pytest.skip(f"{method} or {dataset} is not registered")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_training_step(benchmark, dataset, method):
    _skip_unregistered(dataset, method)
    trainer = _trainer_step(dataset, method)
    benchmark.extra_info["source"] = trainer.dataset.source
    benchmark.group = f"step:{dataset}"
    benchmark(trainer.step)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", LINEAR_DATASETS)
def test_pack_training_step(benchmark, dataset, method):
    """One step of a pack of PACK runs; extra_info has the time per run-step."""
    _skip_unregistered(dataset, method)
    trainer = _trainer_step(dataset, method, PACK)
    benchmark.group = f"pack step:{dataset}"
    benchmark.extra_info["runs"] = PACK
    benchmark(trainer.step)
    benchmark.extra_info["seconds_per_run_step"] = benchmark.stats.stats.median / PACK
    print(f"\n{dataset} {method}: a pack of {PACK}: {benchmark.stats.stats.median / PACK * 1e3:.3f} ms per run-step")


RUNS = 5


def test_launcher_per_run_overhead(benchmark, tmp_path):
    """Launch RUNS one-step runs with the inline executor; extra_info has the time per run.

    Compare with test_runner_one_step_run: the difference is the launcher's own cost
    (expansion, preflight, state scans, locks) per run.
    """
    from invbench.sweep.schema import DatasetEntry, ExecutorSettings, SweepConfig
    from invbench.sweep.launcher import launch

    rounds = iter(range(1_000_000))

    def setup():
        out = tmp_path / f"round{next(rounds)}"
        config = SweepConfig(name="bench", out=str(out), methods=("erm",), trials=RUNS, steps=1, eval_every=1,
                             datasets=(DatasetEntry("linear_sem", options={"n_per_env": 100}),),
                             executor=ExecutorSettings(kind="inline"))
        return (config,), {"stream": open("/dev/null", "w")}

    benchmark.group = "launcher"
    benchmark.extra_info["runs_per_round"] = RUNS
    benchmark.pedantic(lambda config, stream: launch(config, stream=stream), setup=setup, rounds=5)


def test_runner_one_step_run(benchmark, tmp_path):
    """The runner alone on one 1-step run: the baseline of the launcher's overhead."""
    from invbench.runner import run
    from invbench.spec import make_spec

    rounds = iter(range(1_000_000))
    spec = make_spec("linear_sem", "erm", dataset_options={"n_per_env": 100}, steps=1, eval_every=1, device="cpu")

    def setup():
        return (spec, tmp_path / f"round{next(rounds)}"), {}

    benchmark.group = "launcher"
    benchmark.pedantic(run, setup=setup, rounds=10)
