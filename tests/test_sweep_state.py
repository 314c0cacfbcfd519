"""Run states from run directories and executors, and the progress/ETA arithmetic."""

import io
import os
import stat
import time

import pytest

from invbench.io import atomic_write_json
from invbench.runner import DONE, ERROR, STARTED, run_lock
from invbench.spec import make_spec
from invbench.sweep.executors.base import LauncherLock
from invbench.sweep.progress import Progress, eta_seconds, format_duration
from invbench.sweep.launches import write_launch
from invbench.sweep.state import DONE_STATE, FAILED, NOT_LAUNCHED, QUEUED, RUNNING, STALE, run_states


@pytest.fixture
def spec():
    return make_spec("linear_sem", "erm", dataset_options={"n_per_env": 20}, steps=5, eval_every=5)


def state_of(spec, out):
    (result,) = run_states([spec], out)
    return result


def test_local_run_moves_through_its_states(spec, tmp_path):
    run_dir = tmp_path / spec.dirname
    assert state_of(spec, tmp_path).state == NOT_LAUNCHED
    with LauncherLock(tmp_path) as lock:
        write_launch(run_dir, "local", lock.job_id, **lock.launch_fields())
        queued = state_of(spec, tmp_path)
        assert (queued.state, queued.executor, queued.job_id) == (QUEUED, "local", lock.job_id)
        with run_lock(run_dir):
            assert state_of(spec, tmp_path).state == RUNNING
    # the launcher is gone and nothing holds the run: stale, with the reason
    stale = state_of(spec, tmp_path)
    assert stale.state == STALE and "launcher" in stale.reason and "is gone" in stale.reason
    atomic_write_json(run_dir / DONE, {"run_id": spec.run_id, "steps": 5, "source": {"name": "synthetic"},
                                       "wall_time": 12.5})
    done = state_of(spec, tmp_path)
    assert (done.state, done.wall_time) == (DONE_STATE, 12.5)


def test_failed_run_shows_its_error_and_last_traceback_lines_until_it_is_resubmitted(spec, tmp_path):
    run_dir = tmp_path / spec.dirname
    with LauncherLock(tmp_path) as lock:
        write_launch(run_dir, "local", lock.job_id, **lock.launch_fields())
        lines = [f"line {i}" for i in range(10)]
        atomic_write_json(run_dir / ERROR, {"type": "RuntimeError", "message": "boom", "time": time.time() + 1,
                                            "traceback": "\n".join(lines)})
        failed = state_of(spec, tmp_path)
        assert (failed.state, failed.reason) == (FAILED, "RuntimeError: boom")
        assert failed.tail.splitlines() == lines[-6:]
        # a retry writes a newer launch.json: the old error no longer decides
        time.sleep(0.01)
        atomic_write_json(run_dir / ERROR, {"type": "RuntimeError", "message": "boom", "time": time.time() - 5})
        write_launch(run_dir, "local", lock.job_id, **lock.launch_fields())
        assert state_of(spec, tmp_path).state == QUEUED


def test_run_started_outside_a_launch_and_not_running_is_stale(spec, tmp_path):
    run_dir = tmp_path / spec.dirname
    run_dir.mkdir()
    atomic_write_json(run_dir / STARTED, {"pid": 1})
    assert state_of(spec, tmp_path).state == STALE


SACCT = """JobID|State|NodeList
7_0|COMPLETED|localhost
7_0.batch|COMPLETED|localhost
7_1|RUNNING|localhost
7_2|OUT_OF_MEMORY|localhost
7_3|CANCELLED by 0|localhost
7_[4-5%2]|PENDING|None assigned
"""


def test_slurm_job_states_come_from_sacct(tmp_path, monkeypatch):
    from invbench.sweep.executors.slurm import SlurmExecutor

    fake = tmp_path / "bin" / "sacct"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n" + SACCT + "EOF\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    submitit_folder = tmp_path / "sub"
    submitit_folder.mkdir()
    (submitit_folder / "7_2_0_log.err").write_text("loading\nslurmstepd: error: Detected 1 oom_kill event\n")
    launches = [{"job_id": f"7_{i}", "folder": str(submitit_folder)} for i in range(7)]
    states = SlurmExecutor.job_states(launches)
    assert not states["7_0"].alive and not states["7_0"].failed  # completed without its done.json: stale
    assert states["7_1"].alive and states["7_1"].running
    assert states["7_2"].failed and "OUT_OF_MEMORY" in states["7_2"].reason and "oom_kill" in states["7_2"].tail
    assert not states["7_3"].alive and not states["7_3"].failed and "CANCELLED" in states["7_3"].reason
    assert states["7_4"].alive and not states["7_4"].running and states["7_5"].alive  # a pending array range
    assert not states["7_6"].alive and "unknown" in states["7_6"].reason


def test_eta_is_mean_wall_time_times_remaining_over_parallelism():
    assert eta_seconds([10.0, 20.0], remaining=3, parallel=2) == pytest.approx(22.5)  # 15 * 3 / 2
    assert eta_seconds([], remaining=3, parallel=2) is None
    assert eta_seconds([10.0], remaining=0, parallel=2) == 0.0
    assert [format_duration(s) for s in (None, 5, 185, 7322)] == ["?", "5s", "3m05s", "2h02m"]


def test_progress_line_counts_and_log_files_get_one_line_per_finished_run():
    stream = io.StringIO()
    progress = Progress(total=10, parallel=2, stream=stream)
    assert progress.line(done=2, failed=1, running=2) == "[3/10] done 2 failed 1 running 2 queued 5 ETA ?"
    progress.wall_times += [10.0, 20.0]
    assert progress.line(done=2, failed=1, running=2).endswith("ETA 52s")  # 15 s x 7 / 2
    progress.update(0, 0, 1)
    progress.update(0, 0, 2)  # same number finished: no new line in a log file
    progress.update(1, 0, 2)
    assert len(stream.getvalue().splitlines()) == 2
