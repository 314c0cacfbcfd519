"""Speed regression benchmarks (pytest-benchmark): one training step per method and dataset,
and the launcher's per-run overhead.

Skipped by `make test` (addopts has --benchmark-skip). `make bench` runs them and compares
with the baseline stored under results/baselines/speed (fails when a mean gets 25 % slower);
`make bench-save` stores a new baseline. Timings are machine-specific: pytest-benchmark
keeps one folder per machine signature, and a baseline is only meaningful on the machine
that saved it.
"""

from __future__ import annotations

import functools

import pytest

METHODS = ("erm", "irm", "vrex", "mmrex", "groupdro")
# Cheap synthetic ones, and the IRM / DomainBed protocols on real data available offline
# (Debian's Fashion-MNIST); a dataset whose data cannot be found is skipped.
DATASETS = ("linear_sem", "example2", "cfmnist_irm", "cfmnist_domainbed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: timings that do not depend on what else the machine runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _dataset(name: str):
    from invbench.errors import DataUnavailableError
    from invbench.runner import build_dataset
    from invbench.spec import make_spec

    try:
        return build_dataset(make_spec(name, "erm", device="cpu"))
    except DataUnavailableError as exc:
        pytest.skip(f"{name}: {exc}")


def _one_step(dataset_name: str, method_name: str):
    """The trainer's step (objective, l2, penalty, divide, backward, Adam) on a built spec."""
    import torch

    from invbench.splits import TRAIN
    from invbench.models import build_model
    from invbench.registry import METHODS as REGISTRY
    from invbench.trainer import MinibatchSampler, make_optimizer
    from invbench.spec import make_spec

    spec = make_spec(dataset_name, method_name, device="cpu")
    dataset = _dataset(dataset_name)
    train_envs = [i for i in range(len(dataset.envs)) if i not in spec.test_envs]
    hp = dict(spec.hparams)
    torch.manual_seed(0)
    model = build_model(spec.model, dataset.input_shape, dataset.n_outputs, hp)
    method = REGISTRY.get(method_name)(hp, len(train_envs), dataset.task,
                                       env_sizes=[dataset.envs[i].size(TRAIN) for i in train_envs])
    optimizer = make_optimizer(model, hp)
    sampler = MinibatchSampler(dataset, train_envs, hp["batch_size"], 0)
    state = {"step": 0}

    def step():
        objective = method.objective(model, sampler.batches(state["step"]), state["step"])
        loss = objective.risk
        if hp["l2"]:
            loss = loss + hp["l2"] * sum(p.pow(2).sum() for p in model.parameters())
        if objective.penalty is not None:
            loss = loss + objective.penalty_weight * objective.penalty
        loss = loss / objective.divide_by
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] += 1

    return step, dataset


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_training_step(benchmark, dataset, method):
    from invbench.registry import DATASETS as DATA, METHODS as REGISTRY

    if method not in REGISTRY or dataset not in DATA:
        pytest.skip(f"{method} or {dataset} is not registered")
    step, data = _one_step(dataset, method)
    benchmark.extra_info["source"] = data.source
    benchmark.group = f"step:{dataset}"
    benchmark(step)


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
