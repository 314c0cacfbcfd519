"""Packs against today's engine (each run alone), measured side by side in one pytest run.

The issue's speed targets, on this machine's cores (the local executor's defaults: one
worker per core, one torch thread each):

- a sweep of 1,000 ``linear_sem`` runs (linear-sem protocol: 2,000 full-batch steps; erm,
  irm, vrex, groupdro) launched packed, against the same local executor with pack_size 1
  (target: 20x the runs per second). The pack_size-1 sweep would take about 10 minutes, so
  its runs per second come from a subset of the same protocol and method mix;
- ``example1``-``example3`` (linear-unit-tests protocol: 10,000 full-batch steps, n_per_env
  10,000): the same comparison on subsets, with steps cut (see ``_rate_at_protocol_steps``);
- the IRM-protocol MLP on Colored Fashion-MNIST: seconds per run-step alone and inside a
  pack (target: no slower per run inside the pack);
- the whole linear unit-test protocol (6 datasets x 50 trials x 20 draws x 4 methods): the
  estimate that `sweep launch` prints, without launching (target: under 3 hours).

Runs per second, ratios and hours go in extra_info and are printed (run with -s). Skipped
by `make test` like every benchmark; run with
    .venv/bin/python -m pytest tests/speed/test_packs_speed.py -o addopts="" --benchmark-only -s
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

# Steps cut to time the unit tests leave IRM's and V-REx's anneal step beyond the last step:
# their cost per step is the same, and the warning that says so is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::invbench.spec.HParamWarning")

METHODS = ("erm", "irm", "vrex", "groupdro")
SEM_TRIALS, SEM_DRAWS = 25, 10  # x 4 methods = 1,000 runs
SEM_SUBSET_TRIALS, SEM_SUBSET_DRAWS = 5, 2  # x 4 methods = 40 runs, for pack_size 1
UNIT_TESTS = ("example1", "example2", "example3")
UNIT_STEPS = 10_000  # the linear-unit-tests protocol's
UNIT_PACK_TRIALS, UNIT_PACK_DRAWS = 32, 2  # x 4 methods = 256 runs in packs of 64
UNIT_ALONE_TRIALS, UNIT_ALONE_DRAWS = 2, 2  # x 4 methods = 16 runs, each alone
UNIT_PACK = 64
CUT_STEPS = (50, 250)  # the two step counts the unit tests are timed at
TARGET_RATIO = 20.0


def _config(out: Path, datasets, *, trials: int, draws: int, pack_size, steps: int | None = None):
    from invbench.sweep.schema import DatasetEntry, ExecutorSettings, SweepConfig

    entries = tuple(DatasetEntry(name) for name in datasets)
    return SweepConfig(name="speed", out=str(out), methods=METHODS, trials=trials, hparam_draws=draws,
                       steps=steps, eval_every=steps, datasets=entries,
                       executor=ExecutorSettings(kind="local", pack_size=pack_size))


def _launch(config) -> tuple[float, float, str]:
    """Launch ``config`` with the local executor: (wall seconds of the whole launch, seconds
    of its estimate among them, what it printed). Every run must finish."""
    from invbench.sweep import launcher

    estimating: list[float] = []
    print_estimate = launcher._print_estimate

    def timed_estimate(*args, **kwargs):
        start = time.perf_counter()
        try:
            return print_estimate(*args, **kwargs)
        finally:
            estimating.append(time.perf_counter() - start)

    stream = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launcher, "_print_estimate", timed_estimate)
        start = time.perf_counter()
        code = launcher.launch(config, stream=stream)
        wall = time.perf_counter() - start
    assert code == 0, stream.getvalue()[-3000:]
    return wall, sum(estimating), stream.getvalue()


def _runs(config) -> int:
    return len(config.methods) * config.trials * config.hparam_draws * len(config.datasets)


# a. 1,000 linear_sem runs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sem_alone(tmp_path_factory) -> dict:
    """Today's engine on a subset of the sweep: pack_size 1, same protocol and method mix."""
    config = _config(tmp_path_factory.mktemp("sem_alone"), ["linear_sem"], trials=SEM_SUBSET_TRIALS,
                     draws=SEM_SUBSET_DRAWS, pack_size=1)
    wall, _, _ = _launch(config)
    runs = _runs(config)
    return {"runs": runs, "seconds": wall, "runs_per_s": runs / wall}


@pytest.mark.parametrize("pack_size", ["auto", 64])
def test_linear_sem_1000_runs(benchmark, tmp_path, sem_alone, pack_size):
    config = _config(tmp_path / "out", ["linear_sem"], trials=SEM_TRIALS, draws=SEM_DRAWS, pack_size=pack_size)
    runs = _runs(config)
    assert runs == 1_000
    launched: dict = {}

    def sweep():
        launched["wall"], launched["estimating"], launched["printed"] = _launch(config)

    benchmark.group = "packs: linear_sem, 1,000 runs"
    benchmark.pedantic(sweep, rounds=1, iterations=1)
    packed_rate = runs / launched["wall"]
    ratio = packed_rate / sem_alone["runs_per_s"]
    benchmark.extra_info.update({
        "runs": runs, "pack_size": pack_size, "packed_runs_per_s": packed_rate,
        "alone_runs_per_s": sem_alone["runs_per_s"], "ratio": ratio, "target_ratio": TARGET_RATIO,
        "alone_measured_on": f"{sem_alone['runs']} runs of the same protocol and method mix "
                             f"({SEM_SUBSET_TRIALS} trials x {SEM_SUBSET_DRAWS} draws x {len(METHODS)} methods), "
                             f"pack_size 1, in {sem_alone['seconds']:.1f} s",
        "estimate_line": _estimate_line(launched["printed"]),
    })
    print(f"\nlinear_sem, {runs} runs, pack_size {pack_size}: {packed_rate:.2f} runs/s in {launched['wall']:.1f} s; "
          f"alone: {sem_alone['runs_per_s']:.3f} runs/s ({sem_alone['runs']} runs in {sem_alone['seconds']:.1f} s); "
          f"ratio {ratio:.1f}x (target {TARGET_RATIO:g}x)\n  {_estimate_line(launched['printed'])}")


def _estimate_line(printed: str) -> str:
    return next((line for line in printed.splitlines() if line.startswith("estimate:")), "(no estimate line)")


# b. example1-example3 ------------------------------------------------------------------------

def _rate_at_protocol_steps(folder: Path, dataset: str, *, trials: int, draws: int, pack_size) -> dict:
    """Runs per second of the launch at the protocol's 10,000 steps, from two launches with
    steps cut to CUT_STEPS (records at step 0 and at the last step).

    The two launches' training (wall time less the estimate's) gives the seconds per step of
    the whole launch (slope) and its fixed cost (setup, worker start, data, two records,
    writes); at 10,000 steps the launch takes fixed + 10,000 x slope + the estimate's time.
    The protocol's nine further records (eval_every 1,000) are left out: each is one forward
    pass over the data, under a hundredth of the training."""
    timed = []
    for steps in CUT_STEPS:
        config = _config(folder / f"{pack_size}_{steps}", [dataset], trials=trials, draws=draws,
                         pack_size=pack_size, steps=steps)
        wall, estimating, _ = _launch(config)
        timed.append((steps, wall - estimating, estimating))
    (s1, t1, _), (s2, t2, estimating) = timed
    per_step = (t2 - t1) / (s2 - s1)
    fixed = t1 - s1 * per_step
    seconds = fixed + UNIT_STEPS * per_step + estimating
    runs = len(METHODS) * trials * draws
    return {"runs": runs, "pack_size": pack_size, "seconds_per_step": per_step, "fixed_seconds": fixed,
            "estimate_seconds": estimating, "seconds_at_10000": seconds, "runs_per_s": runs / seconds,
            "timed": [{"steps": s, "seconds": t} for s, t, _ in timed]}


@pytest.mark.parametrize("dataset", UNIT_TESTS)
def test_unit_test_runs(benchmark, tmp_path, dataset):
    alone = _rate_at_protocol_steps(tmp_path / "alone", dataset, trials=UNIT_ALONE_TRIALS, draws=UNIT_ALONE_DRAWS,
                                    pack_size=1)
    packed: dict = {}

    def sweep():
        packed.update(_rate_at_protocol_steps(tmp_path / "packed", dataset, trials=UNIT_PACK_TRIALS,
                                              draws=UNIT_PACK_DRAWS, pack_size=UNIT_PACK))

    benchmark.group = "packs: linear unit tests"
    benchmark.pedantic(sweep, rounds=1, iterations=1)
    ratio = packed["runs_per_s"] / alone["runs_per_s"]
    benchmark.extra_info.update({
        "packed": packed, "alone": alone, "ratio": ratio, "target_ratio": TARGET_RATIO,
        "how": f"subsets ({packed['runs']} runs in packs of {UNIT_PACK}; {alone['runs']} runs alone; same methods), "
               f"each launched at {CUT_STEPS[0]} and {CUT_STEPS[1]} steps; runs/s at {UNIT_STEPS:,} steps "
               "extrapolated linearly from the two (fixed cost + steps x seconds per step + the estimate)",
    })
    print(f"\n{dataset}: packs of {UNIT_PACK}: {packed['runs_per_s']:.4f} runs/s; alone: {alone['runs_per_s']:.4f} runs/s "
          f"(both at {UNIT_STEPS:,} steps, extrapolated from {CUT_STEPS}); ratio {ratio:.1f}x (target {TARGET_RATIO:g}x)")


# c. The IRM-protocol MLP on Colored Fashion-MNIST ----------------------------------------------

CFMNIST_PACK = 4
CFMNIST_STEPS = 3


@pytest.fixture
def one_thread():
    """One torch thread, as each local worker has on this machine (cores // workers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cfmnist_mlp_alone_and_in_a_pack(benchmark, one_thread):
    from invbench.errors import DataUnavailableError
    from invbench.spec import make_spec
    from invbench.trainer import Trainer

    specs = [make_spec("cfmnist_irm", "irm", trial=r, device="cpu") for r in range(CFMNIST_PACK)]
    try:
        alone = Trainer(specs[:1])
    except DataUnavailableError as exc:
        pytest.skip(f"cfmnist_irm: {exc}")
    alone.step()  # warm-up
    start = time.perf_counter()
    for _ in range(CFMNIST_STEPS):
        alone.step()
    alone_per_run_step = (time.perf_counter() - start) / CFMNIST_STEPS
    pack = Trainer(specs)
    pack.step()

    benchmark.group = "packs: cfmnist_irm MLP"
    benchmark.pedantic(pack.step, rounds=CFMNIST_STEPS, iterations=1)
    packed_per_run_step = benchmark.stats.stats.mean / CFMNIST_PACK
    ratio = alone_per_run_step / packed_per_run_step
    benchmark.extra_info.update({"pack": CFMNIST_PACK, "alone_seconds_per_run_step": alone_per_run_step,
                                 "packed_seconds_per_run_step": packed_per_run_step, "speedup_per_run": ratio,
                                 "source": alone.dataset.source.get("name")})
    print(f"\ncfmnist_irm MLP (irm), 1 thread: alone {alone_per_run_step:.3f} s per run-step; in a pack of "
          f"{CFMNIST_PACK} {packed_per_run_step:.3f} s per run-step ({ratio:.2f}x; target >= 1)")


# d. The whole linear unit-test protocol: the estimate `sweep launch` prints -------------------

UNIT_PROTOCOL = ("example1", "example1s", "example2", "example2s", "example3", "example3s")


@pytest.mark.parametrize("pack_size", ["auto", 1])
def test_linear_unit_test_protocol_estimate(benchmark, tmp_path, pack_size):
    """The estimate of the sweep file benchmark/sweeps/linear_unit_tests.toml at the issue's
    sizes (its 3 datasets and their scrambled variants, 50 trials, 20 draws), computed as
    `sweep launch` does (same packs, workers, threads), without launching."""
    import torch

    from invbench.packing import make_packs
    from invbench.sweep.estimate import estimate
    from invbench.sweep.expansion import expand
    from invbench.sweep.launcher import make_executor
    from invbench.sweep.schema import load_sweep

    shipped = load_sweep(Path(__file__).resolve().parents[2] / "benchmark" / "sweeps" / "linear_unit_tests.toml")
    config = _config(tmp_path / "out", UNIT_PROTOCOL, trials=50, draws=20, pack_size=pack_size)
    assert set(shipped.methods) == set(METHODS) and (shipped.trials, shipped.hparam_draws) == (50, 20)
    specs = expand(config, note=lambda line: None)
    assert len(specs) == 24_000 and {s.steps for s in specs} == {UNIT_STEPS}
    executor = make_executor(config)
    packs = make_packs(specs, pack_size, executor.workers(), memory_per_worker=executor.memory_per_worker)
    found: dict = {}

    def measure():
        before = torch.get_num_threads()
        torch.set_num_threads(executor.threads())
        try:
            found["estimate"] = estimate(packs, workers=executor.workers(), threads=executor.threads(),
                                         tasks=executor.tasks(packs))
        finally:
            torch.set_num_threads(before)

    benchmark.group = "packs: linear unit-test protocol estimate"
    benchmark.pedantic(measure, rounds=1, iterations=1)
    result = found["estimate"]
    assert result is not None
    benchmark.extra_info.update({"pack_size": pack_size, "runs": len(specs), "packs": len(packs),
                                 "hours": result.seconds / 3600, "line": result.line(), "target_hours": 3.0})
    print(f"\nlinear unit-test protocol, pack_size {pack_size}: {result.seconds / 3600:.2f} h\n  {result.line()}")
