"""launch.json, the record of a run's submission, and what an executor says about a job.

Shared by the executors (which write launch records when they submit) and the run states
(which read them and ask each executor about its jobs); it imports neither, so neither
imports the other through it.

launch.json (written atomically at submission) stores the executor, its job id and the
submission time, plus what the executor needs to find the job again (a lock, a folder).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from invbench.io import atomic_write_json, read_json

LAUNCH = "launch.json"
WRITERS = 16  # launch records written at once: the filesystem commits their fsyncs together


@dataclass(frozen=True)
class JobState:
    """What an executor says about one job id."""

    alive: bool  # queued or running there
    running: bool = False  # the task is executing (SLURM RUNNING)
    reason: str = ""  # why it is gone, when not alive
    failed: bool = False  # gone in a way that is the run's failure (OOM, time limit), not a cancel
    tail: str = ""


def write_launch(run_dir: Path, executor: str, job_id: str, **extra: Any) -> None:
    atomic_write_json(Path(run_dir) / LAUNCH, {"executor": executor, "job_id": job_id, "time": time.time(), **extra})


def write_launches(records: Iterable[tuple[Path, str]], executor: str, **extra: Any) -> None:
    """write_launch for each (run directory, job id), many at a time: each record is fsynced,
    and one after another 1,000 of them took seconds of a submission."""
    records = list(records)
    with ThreadPoolExecutor(max_workers=max(1, min(WRITERS, len(records)))) as pool:
        list(pool.map(lambda record: write_launch(record[0], executor, record[1], **extra), records))


def mark_cancelled(run_dir: Path, when: float | None = None) -> None:
    """Record in launch.json that `invbench sweep cancel` stopped this submission (the next
    submission writes a fresh launch.json, which forgets it)."""
    launch = read_launch(run_dir)
    if launch is not None:
        atomic_write_json(Path(run_dir) / LAUNCH, {**launch, "cancelled": time.time() if when is None else when})


def job_order(job_id: str) -> list:
    """Sort key of job ids in numeric order: SLURM's 7_2 before 7_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(job_id))]


def read_launch(run_dir: Path) -> dict | None:
    try:
        return read_json(Path(run_dir) / LAUNCH)
    except (FileNotFoundError, ValueError):
        return None
