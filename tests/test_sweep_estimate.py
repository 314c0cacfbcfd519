"""The estimate `invbench sweep launch` prints before it starts (invbench.sweep.estimate):
its arithmetic with a fake timing function, its cheapness rules, and the line a launch prints."""

import io
import warnings

import pytest

from slurm_cluster import sweep_text

from invbench.spec import HParamWarning, make_spec
from invbench.sweep import launcher
from invbench.sweep.estimate import (STEPS_TIMED, Estimate, duration, estimate, finish_time)
from invbench.sweep.schema import apply_overrides, load_sweep


def spec(method="erm", trial=0, steps=1000):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HParamWarning)
        return make_spec("linear_sem", method, dataset_options={"n_per_env": 50}, trial=trial, steps=steps,
                         device="cpu")


class FakeTiming:
    """seconds_per_pack_step's stand-in: ``per_run`` seconds per run per step (``probe`` for
    a probe's step when given); records its calls and advances ``clock`` by what the call
    would take (a warm-up step and ``steps`` steps)."""

    def __init__(self, per_run=0.01, probe=None):
        self.per_run, self.probe, self.calls, self.now = per_run, probe, [], 0.0

    def __call__(self, specs, steps=STEPS_TIMED):
        self.calls.append((specs[0].method, len(specs), steps))
        step = self.probe if steps == 1 and self.probe is not None else self.per_run * len(specs)
        self.now += (1 + steps) * step
        return step

    def clock(self):
        return self.now


def test_durations_read_as_words():
    assert [duration(s) for s in (0.4, 40, 59.6, 61, 719, 3600, 18_600)] == [
        "0 s", "40 s", "1 min", "1 min", "12 min", "1 h 0 min", "5 h 10 min"]


def test_packs_go_to_the_first_free_worker_in_queue_order():
    assert finish_time([3, 3, 3], 2) == 6
    assert finish_time([5, 1, 1, 1], 2) == 5
    assert finish_time([1, 1, 1, 5], 2) == 6  # the long one comes last and waits for a free worker
    assert finish_time([2, 2], 8) == 2
    assert finish_time([], 2) == 0


def test_each_kind_is_timed_once_with_its_largest_pack_and_every_pack_costs_steps_x_that():
    erm = [spec(trial=t) for t in range(5)]
    vrex = [spec("vrex", trial=t) for t in range(2)]
    packs = [erm[:2], erm[2:4], erm[4:], vrex]  # erm kind: largest pack 2
    timing = FakeTiming(per_run=0.01)
    found = estimate(packs, workers=2, threads=1, time_pack=timing)
    assert timing.calls == [("erm", 1, 1), ("erm", 2, STEPS_TIMED), ("vrex", 1, 1), ("vrex", 2, STEPS_TIMED)]
    # every pack of a kind costs 1000 steps x 0.02 s (a pack of 2): 20 s each; 4 packs on 2 workers
    assert found.seconds == pytest.approx(40.0)
    assert (found.runs, found.packs, found.largest_pack, found.kinds, found.timed) == (7, 4, 2, 2, 2)


def test_the_line_says_runs_packs_workers_threads_time_and_what_was_timed():
    line = Estimate(runs=24_000, packs=1_200, largest_pack=20, workers=2, threads=1, seconds=18_600, kinds=24,
                    timed=24, extrapolated=0, untimed=0).line()
    assert line == ("estimate: 24,000 runs in 1,200 packs of <= 20 on 2 workers x 1 thread: about 5 h 10 min "
                    "(timed 3 steps of each of 24 pack kinds on this machine)")


def test_a_kind_too_slow_to_time_in_full_is_its_runs_steps_from_one_probe():
    packs = [[spec(trial=t) for t in range(4)]]
    timing = FakeTiming(probe=2.5)  # the probe takes 5 s; timing the pack of 4 would take about 40 s
    found = estimate(packs, workers=1, threads=1, time_pack=timing, clock=timing.clock)
    assert timing.calls == [("erm", 1, 1)]
    assert found.seconds == pytest.approx(1000 * 4 * 2.5)
    assert found.extrapolated == 1
    assert "scaled from part of their pack" in found.line()


def test_each_kind_spends_its_share_of_the_budget_and_kinds_not_timed_take_the_mean_per_run_step():
    now = [0.0]

    def timing(specs, steps=STEPS_TIMED):
        now[0] += 0.5 if steps == 1 else 4.0  # a probe takes 0.5 s, a pack's timing 4 s
        return {"erm": 0.01, "vrex": 0.03}[specs[0].method] * len(specs)  # irm cannot take a step

    packs = [[spec(trial=t) for t in range(2)], [spec("vrex", trial=t) for t in range(2)],
             [spec("irm", trial=t) for t in range(2)]]
    found = estimate(packs, workers=1, threads=1, time_pack=timing, clock=lambda: now[0])
    # erm's share of the 5 s is 5/3 s: after its 0.5 s probe, timing 2 runs (about 1 s each)
    # does not fit, so its pack's step is 2 x its run's 0.01 s; vrex likewise (share 2.25 s);
    # irm fails its probe: not timed, at the others' mean 0.02 s per run-step
    assert (found.timed, found.extrapolated, found.untimed) == (0, 2, 1)
    assert found.seconds == pytest.approx(1000 * (2 * 0.01 + 2 * 0.03 + 2 * 0.02))


def test_a_pack_too_large_to_time_in_full_is_timed_in_part_and_scaled():
    now = [0.0]
    calls = []

    def timing(specs, steps=STEPS_TIMED):
        calls.append((len(specs), steps))
        now[0] += 0.05 if steps == 1 else 0.1 * len(specs)  # a probe 0.05 s; timing 0.1 s per run
        return 0.001 * len(specs) ** 0.5  # a pack's step grows slower than its runs

    packs = [[spec(trial=t) for t in range(256)]]
    found = estimate(packs, workers=1, threads=1, time_pack=timing, clock=lambda: now[0])
    # the whole budget (5 s) is this kind's: after the probe, (5 - 0.05) // (2 x 0.05) = 49 runs
    # fit, timed as parts of 16 and 33 runs; the line through them, at 256 runs
    assert calls == [(1, 1), (16, STEPS_TIMED), (33, STEPS_TIMED)]
    per_run = 0.001 * (33 ** 0.5 - 16 ** 0.5) / (33 - 16)
    assert found.seconds == pytest.approx(1000 * (0.001 * 33 ** 0.5 + per_run * (256 - 33)))
    assert found.extrapolated == 1


def test_a_pack_of_cheap_runs_is_its_fixed_cost_per_step_plus_its_runs_cost():
    # 2 ms of overhead per step and 10 us per run (a linear model on a few rows): scaling one
    # part by the runs would say 256 / 33 x (2 ms + 0.33 ms) = 18 ms, not 4.56 ms
    now = [0.0]

    def timing(specs, steps=STEPS_TIMED):
        now[0] += 0.05 if steps == 1 else 0.1 * len(specs)
        return 0.002 + 1e-5 * len(specs)

    found = estimate([[spec(trial=t) for t in range(256)]], workers=1, threads=1, time_pack=timing,
                     clock=lambda: now[0])
    assert found.seconds == pytest.approx(1000 * (0.002 + 1e-5 * 256))


def test_a_part_that_times_slower_than_a_larger_one_never_makes_the_pack_cheaper_than_the_larger():
    now = [0.0]

    def timing(specs, steps=STEPS_TIMED):  # noise: the small part timed slower than the large one
        now[0] += 0.05 if steps == 1 else 0.1 * len(specs)
        return 0.01 if len(specs) < 20 else 0.005

    found = estimate([[spec(trial=t) for t in range(256)]], workers=1, threads=1, time_pack=timing,
                     clock=lambda: now[0])
    assert found.seconds == pytest.approx(1000 * 0.005)


def test_a_launch_of_many_kinds_gets_a_budget_per_kind():
    # 12 methods' packs of 16 runs: a probe 0.05 s, timing 0.1 s per run. With 5 s in all
    # (0.42 s a kind) no kind could time 4 runs; with 1.25 s a kind (15 s) each fits 12
    now = [0.0]
    calls = []

    def timing(specs, steps=STEPS_TIMED):
        calls.append((specs[0].method, len(specs), steps))
        now[0] += 0.05 if steps == 1 else 0.1 * len(specs)
        return 0.001 * len(specs)

    methods = ["erm", "irm", "vrex", "mmrex", "groupdro", "andmask", "iga", "coral", "mmd", "sd", "iberm", "ibirm"]
    packs = [[spec(method, trial=t) for t in range(16)] for method in methods]
    found = estimate(packs, workers=1, threads=1, time_pack=timing, clock=lambda: now[0])
    assert {method for method, runs, steps in calls if steps == STEPS_TIMED and runs >= 4} == set(methods)
    assert found.untimed == 0 and found.seconds == pytest.approx(12 * 1000 * 0.016)


def test_a_tiny_launch_is_not_timed():
    timing = FakeTiming()
    assert estimate([[spec(steps=20)], [spec(trial=1, steps=20)]], workers=1, threads=1, time_pack=timing) is None
    assert timing.calls == []


def test_slurm_tasks_sum_their_packs_and_the_array_runs_them_at_its_parallelism():
    specs = [spec(trial=t) for t in range(6)]
    packs = [specs[0:2], specs[2:4], specs[4:6]]
    tasks = [[packs[0], packs[1]], [packs[2]]]
    found = estimate(packs, workers=256, threads=2, tasks=tasks, time_pack=FakeTiming(per_run=0.01))
    assert found.longest_task == pytest.approx(2 * 1000 * 0.02)
    assert found.seconds == pytest.approx(40.0)
    assert found.line() == ("estimate: 6 runs in 3 packs of <= 2 in 2 SLURM tasks x 2 threads: about 40 s for the "
                            "longest task, 40 s in all at 256 task(s) at once (timed 3 steps of the pack kind on "
                            "this machine)")


def test_a_launch_prints_the_estimate_before_it_starts(tmp_path, monkeypatch):
    import invbench.trainer

    monkeypatch.setattr(invbench.trainer, "seconds_per_pack_step", FakeTiming(per_run=0.25))
    path = tmp_path / "sweep.toml"
    path.write_text(sweep_text(tmp_path / "out", trials=4, steps=200, executor="inline"))
    config = apply_overrides(load_sweep(path), pack_size=2)
    stream = io.StringIO()
    assert launcher.launch(config, stream=stream) == 0
    lines = stream.getvalue().splitlines()
    # 2 packs x 200 steps x 0.5 s (a pack of 2) on the one inline worker: 200 s
    expected = ("estimate: 4 runs in 2 packs of <= 2 on 1 worker x 1 thread: about 3 min "
                "(timed 3 steps of the pack kind on this machine)")
    assert lines[lines.index("launch: 4 run(s) with the inline executor") + 1] == expected
    assert lines[-1] == "sweep t: done 4"  # printed before the runs ran


def test_timing_a_pack_takes_one_warm_up_step_and_the_steps_asked_for(monkeypatch):
    # never more: a schedule or a plugin (a run that waits at a step) may act at a later step
    import invbench.trainer

    taken = []
    real_step = invbench.trainer.Trainer.step
    monkeypatch.setattr(invbench.trainer.Trainer, "step", lambda self: taken.append(1) or real_step(self))
    assert invbench.trainer.seconds_per_pack_step([spec(steps=1000)], steps=STEPS_TIMED) > 0
    assert len(taken) == 1 + STEPS_TIMED
