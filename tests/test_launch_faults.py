"""A launch under faults: a full disk, a worker killed by the OOM killer, SIGTERM (`sweep
cancel`) and launchers killed before. A launch that did not finish its runs exits non-zero
and names them; no lock file outlives its launcher. Synchronised on marker files."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from slurm_cluster import sweep_text

from invbench.sweep.executors.base import LAUNCHERS, LauncherLock

FAULT_PLUGIN = '''
import errno
import os
import threading

import invbench.runner as runner
from invbench.methods.erm import ERM
from invbench.registry import METHODS

DISK_FULL = []  # set once a "diskfull" run reached step 3


def _unless_disk_full(write):
    def checked(path, *args, **kwargs):
        if DISK_FULL and "-diskfull-" in os.fspath(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        return write(path, *args, **kwargs)
    return checked


for _name in ("append_jsonl", "atomic_write_bytes", "atomic_write_json"):
    setattr(runner, _name, _unless_disk_full(getattr(runner, _name)))


@METHODS.register("diskfull")
class DiskFull(ERM):
    """ERM whose disk fills up at step 3: every later write into its run directory fails."""

    def objective(self, model, batches, step):
        if step == 3:
            DISK_FULL.append(True)
        return super().objective(model, batches, step)


@METHODS.register("blocks")
class Blocks(ERM):
    """ERM that, at step 3, writes its pid to $FAULT_MARKER and waits until it is killed."""

    def objective(self, model, batches, step):
        if step == 3:
            marker = os.environ["FAULT_MARKER"]
            with open(marker + ".part", "w") as handle:
                handle.write(str(os.getpid()))
            os.replace(marker + ".part", marker)
            threading.Event().wait()
        return super().objective(model, batches, step)
'''


@pytest.fixture
def faults(tmp_path):
    """Environment that registers "diskfull" and "blocks" in the launcher and its workers."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "fault_plugin.py").write_text(FAULT_PLUGIN)
    return {**os.environ, "INVBENCH_PLUGINS": "fault_plugin", "FAULT_MARKER": str(tmp_path / "marker"),
            "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def write_sweep(tmp_path, methods, executor="local"):
    path = tmp_path / "sweep.toml"
    path.write_text(sweep_text(tmp_path / "out", methods=methods, trials=1, steps=20, eval_every=5,
                               n_per_env=50, executor=executor))
    return path


def dirname(path, method):
    """The run directory name of the sweep's run of ``method`` (its only one)."""
    (run_dir,) = (path.parent / "out").glob(f"linear_sem-{method}-*")
    return run_dir.name


def launch(path, env):
    return subprocess.Popen([sys.executable, "-m", "invbench.cli", "sweep", "launch", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_marker(marker, proc):
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the blocking run never reached step 3"
        time.sleep(0.02)
    return int(marker.read_text())


def lock_files(tmp_path):
    return sorted((tmp_path / "out" / LAUNCHERS).glob("*.lock"))


def test_a_full_disk_ends_the_launch_non_zero_naming_the_run(tmp_path, faults):
    path = write_sweep(tmp_path, ("diskfull",))
    proc = launch(path, faults)
    _, err = proc.communicate(timeout=300)
    victim = dirname(path, "diskfull")
    assert proc.returncode == 1, err
    assert "No space left on device" in err and "error.json could not be written" in err
    assert f"1 run(s) did not finish: {victim}" in err
    assert not lock_files(tmp_path)


def test_a_worker_killed_by_the_oom_killer_ends_the_launch_non_zero_naming_its_run(tmp_path, faults):
    path = write_sweep(tmp_path, ("blocks",))
    proc = launch(path, faults)
    try:
        worker = wait_for_marker(tmp_path / "marker", proc)
        os.kill(worker, signal.SIGKILL)  # what the OOM killer does
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    victim = dirname(path, "blocks")
    assert proc.returncode == 1, err
    assert f"worker {worker} died (exit code -9) while running {victim}" in err
    assert f"1 run(s) did not finish: {victim}" in err


def test_sigterm_stops_the_launcher_and_its_workers_and_removes_its_lock_file(tmp_path, faults):
    path = write_sweep(tmp_path, ("blocks",))
    proc = launch(path, faults)
    try:
        wait_for_marker(tmp_path / "marker", proc)
        assert len(lock_files(tmp_path)) == 1
        proc.send_signal(signal.SIGTERM)  # as `invbench sweep cancel` does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err and "Traceback" not in err
    assert not lock_files(tmp_path)
    assert not (tmp_path / "out" / dirname(path, "blocks") / "error.json").exists()  # stale, not failed


def test_lock_files_of_dead_launchers_are_removed_by_the_next_one(tmp_path):
    folder = tmp_path / LAUNCHERS
    folder.mkdir(parents=True)
    host, dead = socket.gethostname(), 2 ** 22 + 1  # above Linux's pid_max: never a live process
    killed = folder / f"{host}-{dead}-1700000000000000000.lock"
    alive = folder / f"{host}-{os.getpid()}-1700000000000000000.lock"  # its launcher lives: kept
    elsewhere = folder / f"other-host-{dead}-1700000000000000000.lock"  # cannot be checked from here: kept
    for path in (killed, alive, elsewhere):
        path.touch()
    with LauncherLock(tmp_path) as lock:
        assert sorted(folder.iterdir()) == sorted([alive, elsewhere, lock.path])
    assert sorted(folder.iterdir()) == sorted([alive, elsewhere])
