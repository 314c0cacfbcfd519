"""The run directory's vocabulary: file names, what the files say, and the run lock.

Kept free of torch so that the results and the launcher can read run directories without
importing the training stack. The runner writes these files; everything else reads them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from invbench.errors import InvbenchError

SPEC, DATASET, STARTED, METRICS, TIMING, CHECKPOINT, DONE, ERROR, LOCK = (
    "spec.json", "dataset.json", "started.json", "metrics.jsonl", "timing.jsonl",
    "checkpoint.pt", "done.json", "error.json", "lock",
)


class RunBusyError(InvbenchError):
    """Another process holds the run's lock: it is training this run right now."""


def run_status(run_dir: Path) -> str:
    """done, failed, started or missing: what the files say (the launcher adds liveness)."""
    run_dir = Path(run_dir)
    if (run_dir / DONE).exists():
        return "done"
    if (run_dir / ERROR).exists():
        return "failed"
    if (run_dir / STARTED).exists():
        return "started"
    return "missing"


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold the run's exclusive lock (non-blocking). The kernel releases it when the process
    dies, however it dies, so a held lock means a live worker."""
    fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunBusyError(f"run {Path(run_dir).name} is being trained by another process (its lock is held)") from None
    try:
        yield
    finally:
        os.close(fd)


def lock_held(path: str | Path) -> bool:
    """Whether some live process holds an flock on ``path`` (False when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def is_locked(run_dir: Path) -> bool:
    """Whether a live process is training the run now (its lock is held)."""
    return lock_held(Path(run_dir) / LOCK)
