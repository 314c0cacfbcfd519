"""What state each run of a sweep is in, from its directory and its executor.

States:
  not launched  no launch.json: never submitted
  queued        submitted; its executor still holds it (SLURM pending, or a live local
                launcher that has not started it yet)
  running       a live process holds the run's lock, or SLURM runs the task that runs it
  done          a valid done.json (rundir.check_done)
  failed        error.json newer than the latest submission (reason: the error and the last
                lines of its traceback), or a SLURM job that ended badly (OUT_OF_MEMORY, ...)
  stale         submitted, yet nothing holds it any more: its worker or launcher died, or its
                job ended, without finishing. `launch` starts stale runs again.
  cancelled     stopped by `invbench sweep cancel` (which records it in launch.json) and not
                finished; `launch` starts cancelled runs again.

A run's launch.json (invbench.sweep.launches) names its executor and job: the executor is
asked whether that job is still alive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from invbench.io import read_json
from invbench.rundir import ERROR, STARTED, is_locked, read_done
from invbench.sweep.executors import executor_class
from invbench.sweep.launches import JobState, read_launch

NOT_LAUNCHED, QUEUED, RUNNING, DONE_STATE, FAILED, STALE, CANCELLED = (
    "not launched", "queued", "running", "done", "failed", "stale", "cancelled")
STATES = (NOT_LAUNCHED, QUEUED, RUNNING, DONE_STATE, FAILED, STALE, CANCELLED)
TAIL_LINES = 6


@dataclass
class RunState:
    spec: Any
    run_dir: Path
    state: str
    reason: str = ""  # why failed or stale
    tail: str = ""  # the last lines of the traceback
    executor: str | None = None
    job_id: str | None = None
    wall_time: float | None = None  # of a done run


def _read(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def error_summary(error: dict) -> tuple[str, str]:
    reason = f"{error.get('type', 'Error')}: {error.get('message', '')}".strip()
    lines = [line for line in str(error.get("traceback", "")).rstrip().splitlines() if line.strip()]
    return reason, "\n".join(lines[-TAIL_LINES:])


def run_states(specs: Iterable[Any], out_root: Path) -> list[RunState]:
    """The state of every spec's run under out_root, asking each executor once for all its jobs."""
    specs = list(specs)
    dirs = [Path(out_root) / spec.dirname for spec in specs]
    launches = [read_launch(d) for d in dirs]
    by_kind: dict[str, list[dict]] = {}
    for launch in launches:
        if launch is not None:
            by_kind.setdefault(launch.get("executor", "?"), []).append(launch)
    jobs: dict[tuple[str, str], JobState] = {}
    for kind, items in by_kind.items():
        try:
            cls = executor_class(kind)
        except KeyError:
            continue
        for job_id, job_state in cls.job_states(items).items():
            jobs[(kind, job_id)] = job_state
    return [classify(spec, run_dir, launch, jobs) for spec, run_dir, launch in zip(specs, dirs, launches)]


def classify(spec: Any, run_dir: Path, launch: dict | None, jobs: dict[tuple[str, str], JobState]) -> RunState:
    executor = launch.get("executor") if launch else None
    job_id = str(launch.get("job_id")) if launch else None
    done = read_done(run_dir, spec.run_id)  # an invalid done.json does not count: the run is not done
    if done is not None:
        return RunState(spec, run_dir, DONE_STATE, executor=executor, job_id=job_id, wall_time=done.get("wall_time"))
    if is_locked(run_dir):
        return RunState(spec, run_dir, RUNNING, executor=executor, job_id=job_id)
    error = _read(run_dir / ERROR)
    if error is not None and (launch is None or error.get("time", 0) >= launch.get("time", 0)):
        reason, tail = error_summary(error)
        return RunState(spec, run_dir, FAILED, reason, tail, executor, job_id)
    if launch is None:
        if (run_dir / STARTED).exists():
            return RunState(spec, run_dir, STALE, "started outside a launch and not running")
        return RunState(spec, run_dir, NOT_LAUNCHED)
    job = jobs.get((executor, job_id))
    if job is None:
        return RunState(spec, run_dir, STALE, f"its {executor} job {job_id} is unknown", executor=executor,
                        job_id=job_id)
    if job.alive:
        started = _read(run_dir / STARTED) or {}
        # A SLURM task runs its runs in order: only the one it started since the submission runs.
        mine = str(started.get("job_id")) == job_id and started.get("time", 0) >= launch.get("time", 0)
        state = RUNNING if job.running and mine else QUEUED
        return RunState(spec, run_dir, state, executor=executor, job_id=job_id)
    if job.failed:
        return RunState(spec, run_dir, FAILED, job.reason, job.tail, executor, job_id)
    if "cancelled" in launch:
        try:
            when = " at " + time.strftime("%Y-%m-%d %H:%M", time.localtime(float(launch["cancelled"])))
        except (TypeError, ValueError, OverflowError):
            when = ""
        return RunState(spec, run_dir, CANCELLED, f"cancelled by `invbench sweep cancel`{when}",
                        executor=executor, job_id=job_id)
    return RunState(spec, run_dir, STALE, job.reason, job.tail, executor, job_id)
