"""What every executor provides, and the launcher lock that in-process executors share."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Sequence

from invbench.rundir import lock_held
from invbench.sweep.launches import JobState

LAUNCHERS = Path(".invbench") / "launchers"


class Executor:
    """Runs specs. ``submit`` writes each run's launch.json before the run can start."""

    kind = ""

    def __init__(self, settings: Any, out_root: Path, sweep_name: str):
        self.settings = settings
        self.out_root = Path(out_root)
        self.sweep_name = sweep_name

    def check(self) -> None:
        """Raise ConfigError when this executor cannot run here (before anything is submitted)."""

    def submit(self, specs: Sequence[Any]) -> list[str]:
        """Run or submit ``specs``; return the job ids."""
        raise NotImplementedError

    @classmethod
    def job_states(cls, launches: Sequence[dict]) -> dict[str, JobState]:
        raise NotImplementedError

    @classmethod
    def cancel(cls, launches: Sequence[dict]) -> list[str]:
        """Stop the jobs of ``launches``; return one message per job stopped."""
        raise NotImplementedError


class LauncherLock:
    """Held by a launcher that runs specs itself (inline, local) for as long as it lives.

    Its runs are "queued" while it is held and "stale" once it is not: the kernel drops an
    flock when its process dies, even by SIGKILL, so no pid can be mistaken for a reused one.
    """

    def __init__(self, out_root: Path):
        self.host, self.pid = socket.gethostname(), os.getpid()
        token = f"{self.host}-{self.pid}-{time.time_ns()}"
        self.path = Path(out_root) / LAUNCHERS / f"{token}.lock"
        self.job_id = f"{self.host}:{self.pid}:{token[-19:]}"
        self._fd: int | None = None

    def __enter__(self) -> "LauncherLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def launch_fields(self) -> dict:
        return {"lock": str(self.path), "pid": self.pid, "host": self.host}


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
