"""What every executor provides, and the launcher lock that in-process executors share."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from invbench.io import pid_alive
from invbench.rundir import lock_held
from invbench.sweep.launches import JobState

LAUNCHERS = Path(".invbench") / "launchers"


class CancelError(RuntimeError):
    """An executor could not stop its jobs (the scheduler refused, or its tool is missing):
    not the user's input, so `sweep cancel` reports it in one line with exit code 1."""


class Executor:
    """Runs packs of specs (invbench.packing; a pack of one is a run alone). ``submit``
    writes each run's launch.json: the in-process executors before the run starts, the
    SLURM executor right after submission (the job id exists only then), so a SLURM job may
    start before its launch.json is written."""

    kind = ""

    def __init__(self, settings: Any, out_root: Path, sweep_name: str):
        self.settings = settings
        self.out_root = Path(out_root)
        self.sweep_name = sweep_name

    def check(self) -> None:
        """Raise ConfigError when this executor cannot run here (before anything is submitted)."""

    def submit(self, packs: Sequence[Sequence[Any]]) -> list[str]:
        """Run or submit ``packs`` (lists of specs, each trained by invbench.runner.run_pack);
        return the job ids."""
        raise NotImplementedError

    def workers(self) -> int:
        """How many packs run at once (at most)."""
        return 1

    def threads(self) -> int:
        """torch threads of each worker."""
        return self.settings.threads or 1

    def tasks(self, packs: Sequence[Sequence[Any]]) -> list[list[Sequence[Any]]] | None:
        """The packs of each job when a job runs several in turn (SLURM's array tasks);
        None when each worker takes one pack at a time."""
        return None

    def memory_per_worker(self, device: str) -> int:
        """The memory one worker may use on ``device``, for ``pack_size = "auto"``: this
        machine's available memory split over the workers."""
        from invbench.packing import available_memory_bytes

        return available_memory_bytes(device) // self.workers()

    @classmethod
    def job_states(cls, launches: Sequence[dict]) -> dict[str, JobState]:
        raise NotImplementedError

    @classmethod
    def cancel(cls, launches: Sequence[dict]) -> list[str]:
        """Stop the jobs of ``launches``; return one message per job stopped. Raises
        CancelError when they could not be stopped."""
        raise NotImplementedError


class LauncherLock:
    """Held by a launcher that runs specs itself (inline, local) for as long as it lives.

    Its runs are "queued" while it is held and "stale" once it is not: the kernel drops an
    flock when its process dies, even by SIGKILL, so no pid can be mistaken for a reused one.
    The lock file is removed on exit, SIGTERM (`sweep cancel`) included; the files of
    launchers that were killed are removed by the next launcher on this machine.
    """

    def __init__(self, out_root: Path):
        self.host, self.pid = socket.gethostname(), os.getpid()
        token = f"{self.host}-{self.pid}-{time.time_ns()}"
        self.path = Path(out_root) / LAUNCHERS / f"{token}.lock"
        self.job_id = f"{self.host}:{self.pid}:{token[-19:]}"
        self._fd: int | None = None
        self._previous_sigterm: Any = None

    def __enter__(self) -> "LauncherLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_launcher_locks(self.path.parent)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def launch_fields(self) -> dict:
        return {"lock": str(self.path), "pid": self.pid, "host": self.host}


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (`sweep cancel`) unwinds the launcher like Ctrl-C: its workers are stopped and
    its lock file removed on the way out; the runs it leaves are stale, never failed."""
    print("\ninvbench: terminated; `invbench sweep launch` resumes the runs", file=sys.stderr)
    raise SystemExit(128 + signum)


def remove_dead_launcher_locks(folder: Path) -> list[Path]:
    """Remove the lock files of launchers on this machine that died without removing theirs
    (SIGKILL, the OOM killer). A file whose launcher is alive, or on another machine, stays."""
    host, removed = socket.gethostname(), []
    for path in folder.glob("*.lock"):
        owner, _, rest = path.stem.rpartition("-")  # HOST-PID-TIME: the host may hold dashes
        owner_host, _, pid = owner.rpartition("-")
        if owner_host != host or not pid.isdigit() or pid_alive(int(pid)) or lock_held(path):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class InProcessExecutor(Executor):
    """Shared by inline and local: liveness and cancel go through the launcher lock."""

    @classmethod
    def job_states(cls, launches: Sequence[dict]) -> dict[str, JobState]:
        out = {}
        for launch in launches:
            job_id = str(launch.get("job_id"))
            if job_id in out:
                continue
            if launch.get("host") not in (None, socket.gethostname()):
                # another machine's lock cannot be tested from here: trust it
                out[job_id] = JobState(alive=True)
            elif lock_held(launch.get("lock", "")):
                out[job_id] = JobState(alive=True)
            else:
                out[job_id] = JobState(alive=False, reason=f"its launcher (pid {launch.get('pid')}) is gone")
        return out

    @classmethod
    def cancel(cls, launches: Sequence[dict]) -> list[str]:
        messages, seen = [], set()
        for launch in launches:
            job_id = str(launch.get("job_id"))
            if job_id in seen or launch.get("host") != socket.gethostname() or not lock_held(launch.get("lock", "")):
                continue
            seen.add(job_id)
            try:
                os.kill(int(launch["pid"]), signal.SIGTERM)
                messages.append(f"sent SIGTERM to launcher pid {launch['pid']}")
            except ProcessLookupError:
                pass
        return messages
