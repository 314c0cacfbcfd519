"""Packs on the launcher side: which specs may train together (invbench.packing), how many
(pack_size N or auto), and how the executors hand packs to invbench.runner.run_pack."""

import io
import json
import os
import warnings

import pytest

from conftest import run_cli
from slurm_cluster import sweep_text

from invbench import packing
from invbench.packing import make_packs, pack_key, pack_size_for, run_memory_bytes, run_shape
from invbench.spec import HParamWarning, make_spec
from invbench.sweep import launcher
from invbench.sweep.expansion import expand
from invbench.sweep.schema import apply_overrides, load_sweep

SMALL = {"n_per_env": 50}
# short runs: a penalty that never anneals in is expected here
pytestmark = pytest.mark.filterwarnings("ignore::invbench.spec.HParamWarning")


def spec(method="irm", trial=0, hparams_seed=0, **overrides):
    options = dict(SMALL, **overrides.pop("options", {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HParamWarning)  # anneal_iters > steps: irrelevant here
        return make_spec("linear_sem", method, dataset_options=options, trial=trial, hparams_seed=hparams_seed,
                         steps=overrides.pop("steps", 20), overrides=overrides, device="cpu")


# Compatibility ----------------------------------------------------------------------------

def test_runs_differing_in_per_run_numbers_trials_and_draws_share_a_pack():
    base = spec()
    same = [spec(lr=0.05), spec(l2=0.01, weight_decay=0.001), spec(penalty_weight=3.0, anneal_iters=7),
            spec(trial=4), spec(hparams_seed=3)]
    assert all(pack_key(s) == pack_key(base) for s in same)


@pytest.mark.parametrize("other", [
    dict(batch_size=10),  # declared shapes=True
    dict(reset_optimizer=False),  # a boolean (the default is True)
    dict(estimator="unbiased"),  # a choice (string; the default is full_batch)
    dict(steps=21),
    dict(options={"n_per_env": 60}),
    dict(method="vrex"),
])
def test_runs_differing_in_shapes_booleans_choices_schedule_data_or_method_never_share_a_pack(other):
    assert pack_key(spec(**other)) != pack_key(spec())


def test_packs_keep_the_given_order_inside_each_kind_and_cut_at_pack_size():
    irm = [spec(trial=t) for t in range(7)]
    vrex = [spec("vrex", trial=t) for t in range(3)]
    mixed = [irm[0], vrex[0], irm[1], irm[2], vrex[1], irm[3], irm[4], irm[5], vrex[2], irm[6]]
    packs = make_packs(mixed, 3)
    assert packs == [irm[0:3], irm[3:6], irm[6:7], vrex]


def test_pack_size_1_is_every_run_alone_in_the_order_given():
    mixed = [spec(trial=0), spec("vrex"), spec(trial=1)]
    assert make_packs(mixed, 1) == [[s] for s in mixed]


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "big", None])
def test_a_bad_pack_size_is_one_clear_message(bad):
    with pytest.raises(ValueError, match=f"^pack_size must be a positive integer or 'auto'; got {bad!r}$"):
        make_packs([spec()], bad)


# auto -------------------------------------------------------------------------------------

def test_memory_of_one_run_is_four_copies_of_its_parameters_plus_activations_plus_own_data():
    # 1,000 parameters x 4 copies x 4 bytes; 64 rows x 256 wide x 3 layers x 3 copies x 4 bytes
    assert run_memory_bytes(1000, 64, 256, 3) == 16_000 + 589_824
    assert run_memory_bytes(1000, 64, 256, 3, data_bytes=5_000) == 16_000 + 589_824 + 5_000


def test_pack_size_for_a_budget_is_between_1_and_256():
    assert pack_size_for(1000, 10_500) == 10
    assert pack_size_for(1000, 999) == 1
    assert pack_size_for(1, 10 ** 12) == 256


def test_the_shape_of_a_linear_sem_run():
    # linear_sem dim 5: 10 inputs (5 causes, 5 effects), one output, no bias; 3 envs of 50
    # rows, test env 2, full batch: 100 training rows; data: 3 x 50 x (10 + 1) float32
    assert run_shape(spec()) == packing.RunShape(n_params=10, batch_rows=100, widest=10, layers=1,
                                                 data_bytes=3 * 50 * 11 * 4)


def test_auto_fills_a_quarter_of_each_workers_memory_and_counts_data_only_when_trials_differ():
    one_run = 10 * 16 + 100 * 10 * 1 * 3 * 4  # run_memory_bytes of the run above, from its shape
    draws = [spec(hparams_seed=h) for h in range(12)]  # one trial: the data is shared
    memory = lambda device: 4 * 5 * one_run  # noqa: E731  room for 5 runs in a quarter
    assert [len(p) for p in make_packs(draws, "auto", memory_per_worker=memory)] == [5, 5, 2]
    trials = [spec(trial=t) for t in range(12)]  # each run has its own data: 6,600 bytes more
    memory = lambda device: 4 * 5 * (one_run + 6_600)  # noqa: E731
    assert [len(p) for p in make_packs(trials, "auto", memory_per_worker=memory)] == [5, 5, 2]
    assert [len(p) for p in make_packs(trials, "auto", memory_per_worker=lambda d: 4 * 5 * one_run)] == [
        3, 3, 3, 3]  # the same memory holds only 3 runs with their own data


def test_auto_never_leaves_workers_without_a_pack_when_there_are_specs_for_them():
    draws = [spec(hparams_seed=h) for h in range(10)]
    roomy = lambda device: 10 ** 12  # noqa: E731
    assert [len(p) for p in make_packs(draws, "auto", 1, memory_per_worker=roomy)] == [10]
    assert [len(p) for p in make_packs(draws, "auto", 4, memory_per_worker=roomy)] == [3, 3, 3, 1]
    assert [len(p) for p in make_packs(draws[:2], "auto", 4, memory_per_worker=roomy)] == [1, 1]


def test_auto_splits_the_available_memory_over_the_workers(monkeypatch):
    one_run = 10 * 16 + 100 * 10 * 1 * 3 * 4
    monkeypatch.setattr(packing, "available_memory_bytes", lambda device: 2 * 4 * 7 * one_run)
    draws = [spec(hparams_seed=h) for h in range(40)]
    assert len(make_packs(draws, "auto", 1)[0]) == 14
    assert len(make_packs(draws, "auto", 2)[0]) == 7


def test_available_memory_of_this_machine_is_at_most_its_total():
    with open("/proc/meminfo") as lines:
        total = next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemTotal:"))
    assert 0 < packing.available_memory_bytes("cpu") <= total


# Executors run packs ----------------------------------------------------------------------

@pytest.fixture
def recorded_packs(monkeypatch):
    """The packs that invbench.runner.run_pack is called with in this process."""
    import invbench.runner

    real, seen = invbench.runner.run_pack, []

    def recording(specs, *args, **kwargs):
        seen.append([s.dirname for s in specs])
        return real(specs, *args, **kwargs)

    monkeypatch.setattr(invbench.runner, "run_pack", recording)
    return seen


def sweep_file(tmp_path, **kwargs):
    path = tmp_path / "sweep.toml"
    path.write_text(sweep_text(tmp_path / "out", **kwargs))
    return path


def test_the_inline_executor_hands_packs_to_run_pack_and_counts_each_run(tmp_path, recorded_packs):
    config = apply_overrides(load_sweep(sweep_file(tmp_path, methods=("erm", "vrex"), trials=3, steps=5)),
                             executor="inline", pack_size=2)
    names = [s.dirname for s in expand(config)]
    stream = io.StringIO()
    assert launcher.launch(config, stream=stream) == 0
    erm, vrex = [n for n in names if "-erm-" in n], [n for n in names if "-vrex-" in n]
    assert sorted(map(sorted, recorded_packs)) == sorted(map(sorted, [erm[:2], erm[2:], vrex[:2], vrex[2:]]))
    assert "sweep t: done 6" in stream.getvalue()


def test_retry_packs_only_the_runs_it_starts(tmp_path, failing_plugin_env, monkeypatch, recorded_packs):
    for key, value in failing_plugin_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(failing_plugin_env["PYTHONPATH"].split(os.pathsep)[0])
    import boom_plugin  # noqa: F401  registers "boom" in this process

    config = apply_overrides(load_sweep(sweep_file(tmp_path, methods=("erm", "boom"), trials=3, steps=5)),
                             executor="inline", pack_size=2)
    assert launcher.launch(config, stream=io.StringIO()) == 1  # the boom runs fail, each alone
    assert len(recorded_packs) == 4
    boom = [s.dirname for s in expand(config) if s.method == "boom"]
    os.unlink(failing_plugin_env["BOOM_FILE"])
    recorded_packs.clear()
    assert launcher.launch(config, mode="retry", stream=io.StringIO()) == 0
    assert recorded_packs == [boom[:2], boom[2:]]


def test_the_local_executor_gives_each_pack_to_one_worker(tmp_path):
    path = sweep_file(tmp_path, trials=6, steps=5)
    result = run_cli("sweep", "launch", path, "--pack-size", "3")
    assert result.returncode == 0, result.stderr
    assert "local: 6 run(s) in 2 pack(s) on 2 worker(s) x 1 torch thread(s)" in result.stderr
    assert "done 6 failed 0" in result.stderr
    config = load_sweep(path)
    specs = expand(config)
    pids = [json.loads((config.out_root / s.dirname / "started.json").read_text())["pid"] for s in specs]
    assert len(set(pids[:3])) == 1 and len(set(pids[3:])) == 1  # a pack's runs trained in one worker


def test_a_slurm_task_runs_its_packs_through_run_pack(tmp_path, recorded_packs):
    from invbench.sweep.executors.slurm import RunTask

    specs = [spec(trial=t, steps=3) for t in range(3)]
    finished = RunTask([specs[:2], specs[2:]], str(tmp_path), threads=1)()
    assert recorded_packs == [[s.dirname for s in specs[:2]], [specs[2].dirname]]
    assert finished == [str(tmp_path / s.dirname) for s in specs]


def test_slurm_tasks_hold_whole_packs_up_to_runs_per_task():
    from invbench.sweep.executors.slurm import task_packs

    packs = [["a", "b"], ["c"], ["d", "e", "f"], ["g"], ["h"]]
    assert task_packs(packs, 1) == [[p] for p in packs]  # one task per pack
    assert task_packs(packs, 3) == [[["a", "b"], ["c"]], [["d", "e", "f"]], [["g"], ["h"]]]
    assert task_packs([["a"], ["b"], ["c"]], 2) == [[["a"], ["b"]], [["c"]]]  # runs_per_task as before packs


def test_a_slurm_launch_submits_one_array_task_per_pack(tmp_path):
    from fake_slurm import fake_slurm

    env = fake_slurm(tmp_path / "bin", job_id=4242)
    path = sweep_file(tmp_path, trials=5, executor="slurm")
    result = run_cli("sweep", "launch", path, "--pack-size", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert "(3 task(s))" in result.stderr
    config = load_sweep(path)
    jobs = [json.loads((config.out_root / s.dirname / "launch.json").read_text())["job_id"] for s in expand(config)]
    assert jobs == ["4242_0", "4242_0", "4242_1", "4242_1", "4242_2"]


# The flag and the key ---------------------------------------------------------------------

@pytest.mark.parametrize("given, shown", [("0", "0"), ("-1", "'-1'"), ("many", "'many'")])
def test_a_bad_pack_size_flag_is_one_line_exit_2_and_creates_nothing(tmp_path, given, shown):
    path = sweep_file(tmp_path)
    result = run_cli("sweep", "launch", path, "--pack-size", given)
    assert result.returncode == 2
    assert result.stderr == f"invbench: error: --pack-size must be a positive integer or 'auto'; got {shown}\n"
    assert not (tmp_path / "out").exists()


def test_a_bad_pack_size_key_is_one_line_exit_2(tmp_path):
    path = sweep_file(tmp_path, extra='pack_size = "big"\n')
    result = run_cli("sweep", "launch", path)
    assert result.returncode == 2
    assert result.stderr == (f"invbench: error: {path}: [executor]: pack_size must be a positive integer or 'auto'; "
                             "got 'big'\n")


def test_pack_size_from_the_file_the_flag_and_the_launch_record(tmp_path, capsys):
    import argparse

    from invbench.commands import sweep

    path = sweep_file(tmp_path, extra="pack_size = 4\n")
    assert load_sweep(path).executor.pack_size == 4
    assert apply_overrides(load_sweep(path), pack_size="auto").executor.pack_size == "auto"
    assert apply_overrides(load_sweep(path), pack_size="8").executor.pack_size == 8
    result = run_cli("sweep", "launch", path, "--executor", "inline", "--steps", "2", "--pack-size", "3")
    assert result.returncode == 0, result.stderr
    args = argparse.Namespace(action="status", file=str(tmp_path / "out"), out=None)
    config, merged, _ = sweep.load(args)  # status, retry and cancel see the launch's pack size
    assert config.executor.pack_size == 3 and merged["pack_size"] == "3"
