"""The local and inline executors through the command line, as a user runs them."""

import io
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, run_cli
from slurm_cluster import steps_of, sweep_text

from invbench.rundir import is_locked
from invbench.runner import run
from invbench.sweep import launcher
from invbench.sweep.expansion import expand
from invbench.sweep.schema import apply_overrides, load_sweep


def write(tmp_path, name="sweep.toml", **kwargs):
    path = tmp_path / name
    path.write_text(sweep_text(tmp_path / kwargs.pop("out", "out"), **kwargs))
    return path


def run_dirs(path):
    config = load_sweep(path)
    return [config.out_root / spec.dirname for spec in expand(config)]


def test_failing_run_does_not_stop_the_others_and_retry_runs_only_it(tmp_path, failing_plugin_env, monkeypatch):
    for key, value in failing_plugin_env.items():  # workers and the inline retry inherit these
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(failing_plugin_env["PYTHONPATH"].split(os.pathsep)[0])
    import boom_plugin  # noqa: F401  registers "boom" in this process too

    path = write(tmp_path, methods=("erm", "boom"), trials=2)
    first = run_cli("sweep", "launch", path)
    assert first.returncode == 1, first.stderr  # runs failed; the others finished
    assert "failed 2" in first.stderr and "done 2" in first.stderr
    config = load_sweep(path)
    text, states = launcher.status(config)
    assert "done: 2" in text and "failed: 2" in text
    assert "RuntimeError: boom at step 3" in text
    assert 'raise RuntimeError("boom at step 3")' in text  # the traceback's last lines
    # launch leaves failed runs alone: nothing new starts
    stream = io.StringIO()
    assert launcher.launch(config, stream=stream) == 1
    assert "nothing to launch" in stream.getvalue() and "sweep retry" in stream.getvalue()
    started = {s.run_dir: (s.run_dir / "started.json").read_bytes() for s in states}
    os.unlink(failing_plugin_env["BOOM_FILE"])  # the bug is fixed
    stream = io.StringIO()
    # retry, here inline (a command-line override) to keep the test short
    assert launcher.launch(apply_overrides(config, executor="inline"), mode="retry", stream=stream) == 0
    assert "retry: 2 run(s)" in stream.getvalue()
    for s in states:  # only the failed runs started again
        assert ((s.run_dir / "started.json").read_bytes() == started[s.run_dir]) == (s.spec.method == "erm")
    assert "done: 4" in launcher.status(config)[0]


def test_sigkill_of_the_launcher_then_relaunch_completes_every_record_exactly_once(tmp_path, blocking_method):
    steps, every = 40, 10
    path = write(tmp_path, methods=(blocking_method.name,), trials=4, steps=steps, eval_every=every)
    dirs = run_dirs(path)
    launcher_proc = subprocess.Popen([sys.executable, "-m", "invbench.cli", "sweep", "launch", str(path)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = blocking_method.wait(2, launcher_proc)  # both workers mid-run; two runs wait in the queue
        # a second launch while the first runs: everything is queued or running, nothing new starts
        second = io.StringIO()
        assert launcher.launch(load_sweep(path), stream=second) == 0
        assert "nothing to launch" in second.getvalue(), second.getvalue()
        assert "not launched" not in second.getvalue() and "stale" not in second.getvalue()
        launcher_proc.send_signal(signal.SIGKILL)
        launcher_proc.wait()
    finally:
        if launcher_proc.poll() is None:
            launcher_proc.kill()
            launcher_proc.wait()
    interrupted = [d for d in dirs if (d / "metrics.jsonl").exists()]
    assert len(interrupted) == 2 and all(steps_of(d) == [0, 10, 20] for d in interrupted)
    assert not any((d / "done.json").exists() for d in dirs)
    # the workers do not outlive their launcher, and their runs' locks go with them
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers) or any(is_locked(d) for d in dirs):
        assert time.monotonic() < deadline, "a worker outlived its launcher"
        time.sleep(0.05)
    status = launcher.status(load_sweep(path))[0]
    assert "stale: 4" in status and "is gone" in status, status
    blocking_method.release()
    stream = io.StringIO()
    assert launcher.launch(load_sweep(path), stream=stream) == 0, stream.getvalue()  # local again
    assert "launch: 4 run(s) with the local executor" in stream.getvalue(), stream.getvalue()
    for d in dirs:
        assert steps_of(d) == list(range(0, steps + 1, every)), d.name
    # and the resumed records are the very bytes of an uninterrupted run (1 thread, as the workers)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        specs = {spec.dirname: spec for spec in expand(load_sweep(path))}
        for d in interrupted:
            clean = run(specs[d.name], tmp_path / "clean")
            assert (clean / "metrics.jsonl").read_bytes() == (d / "metrics.jsonl").read_bytes(), d.name
    finally:
        torch.set_num_threads(threads)


def _alive(pid: int) -> bool:
    """Whether a thread of process ``pid`` still runs. A zombie leader is not enough to call
    it dead: its other threads may still be exiting, with the process's files (and locks)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/stat") as handle:
                if handle.read().split(")")[-1].split()[0] not in ("Z", "X"):
                    return True
        except FileNotFoundError:
            continue
    return False


def test_cancel_stops_the_local_launcher_and_its_runs_read_cancelled(tmp_path, blocking_method):
    path = write(tmp_path, methods=(blocking_method.name,), trials=2)
    launcher_proc = subprocess.Popen([sys.executable, "-m", "invbench.cli", "sweep", "launch", str(path)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        blocking_method.wait(2, launcher_proc)  # both runs mid-way: cancelled while running
        cancelled = run_cli("sweep", "cancel", path)
        assert f"sent SIGTERM to launcher pid {launcher_proc.pid}" in cancelled.stdout, cancelled.stdout
        assert launcher_proc.wait(timeout=60) != 0
    finally:
        if launcher_proc.poll() is None:
            launcher_proc.kill()
            launcher_proc.wait()
    deadline = time.monotonic() + 60
    while "running: 0" not in (status := launcher.status(load_sweep(path))[0]):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert "done: 0" in status and "cancelled: 2" in status and "stale: 0" in status, status
    assert launcher.cancel(load_sweep(path)) == []  # nothing left to cancel


def test_ctrl_c_stops_an_inline_sweep_without_a_traceback_and_relaunch_resumes(tmp_path, blocking_method):
    """Ctrl-C ends the launch (exit 130, no traceback); the interrupted run is stale, not
    failed, no later run starts, and the next launch finishes everything."""
    steps, every = 40, 10
    path = write(tmp_path, methods=(blocking_method.name,), trials=3, steps=steps, eval_every=every,
                 executor="inline")
    dirs = run_dirs(path)
    # Ctrl-C's default disposition in the launcher, whatever this process inherited: a shell
    # starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "invbench.cli", "sweep", "launch", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        blocking_method.wait(1, proc)  # the first run is mid-way
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr, stderr
    assert steps_of(dirs[0]) == [0, 10, 20]
    assert not (dirs[0] / "error.json").exists() and not (dirs[0] / "done.json").exists()
    assert not any((d / "started.json").exists() for d in dirs[1:]), "the sweep went on after Ctrl-C"
    status = launcher.status(load_sweep(path))[0]
    assert "failed: 0" in status and "stale: 3" in status, status
    blocking_method.release()
    stream = io.StringIO()
    assert launcher.launch(load_sweep(path), stream=stream) == 0, stream.getvalue()
    for d in dirs:
        assert steps_of(d) == list(range(0, steps + 1, every)), d.name
