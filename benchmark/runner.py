"""Train one run spec and write its run directory (the training itself: invbench.trainer).

Files of a run directory:
  spec.json       the spec (with its id), written first
  dataset.json    the data source, environment names and sizes
  started.json    pid, host, start time, executor job id, and how the latest attempt
                  started ("start": fresh, resumed at a step, or restarted and why)
  metrics.jsonl   one line per evaluation; deterministic (no clocks), so that the same
                  spec on the same machine gives the same bytes
  timing.jsonl    wall time of each evaluation (kept apart: clocks are not reproducible)
  checkpoint.pt   model, optimizer, method state and step of the latest evaluation
  done.json       written last, atomically: the run finished (rundir.check_done says when
                  it counts), on which data source, and how its last attempt started
  error.json      the error and traceback of a failed attempt
  lock            held (fcntl.flock) by the one process training the run: a second process
                  for the same run gets RunBusyError instead of training it concurrently, and
                  a launcher tells a running run (lock held) from a stale one (its worker died)

Resuming: an attempt resumes from checkpoint.pt only when metrics.jsonl holds every record
up to the checkpoint's step (records after it are dropped, so none repeats); otherwise it
starts over. A file that cannot be read (spec.json, checkpoint.pt, done.json) is renamed
NAME.broken-TIME, never deleted, and the run goes on without it. A done run counts only
for the data source it was trained on: when the data now resolves to another source, the
old directory is set aside (DIR.data-SOURCE-TIME) and the run trained again. Only a run done
on a fallback subset, or a request that names a data directory, looks at the data again
(rundir.source_in_question); a fallback subset never displaces a result on real data.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from invbench.errors import InvbenchError
from invbench.io import (append_jsonl, atomic_write_bytes, atomic_write_json, iter_jsonl, read_json,
                         remove_stale_temporaries)
from invbench.rundir import (CHECKPOINT, DATASET, DONE, ERROR, METRICS, RUN_FILES, SPEC, STARTED, TIMING,
                             RunBusyError, check_done, run_lock, set_aside, source_in_question, superseded)
from invbench.spec import RunSpec
from invbench.devices import resolve_device
from invbench.trainer import CHECKPOINT_FORMAT, Trainer, build_dataset, evaluation_steps
from invbench.warn import Progress

Log = Callable[[str], None]

FRESH, RESUMED, RESTARTED = "fresh", "resumed", "restarted"


class RunFailedError(RuntimeError):
    """A run raised; its directory holds error.json with the traceback (when it could be written)."""

    def __init__(self, run_dir: Path, message: str, where: str | None = None):
        where = where or f"traceback in {run_dir / ERROR}"
        super().__init__(f"run {run_dir.name} failed: {message} ({where})")
        self.run_dir = run_dir


def run(spec: RunSpec, out_root: Path | str, *, job_id: str | None = None, log: Log | None = None) -> Path:
    """Train ``spec`` (resuming from its checkpoint) and return its run directory: a pack of one.

    ``job_id`` is the executor's name for the job that runs it (recorded in started.json).
    A run done on the data source that the spec's data resolves to now returns at once.
    Raises RunFailedError when the run raised (its directory then holds error.json),
    RunBusyError when another process trains it, and the error itself when it could not
    start (its directory holds another run, its data cannot be found).
    """
    outcome = run_pack([spec], out_root, job_id=job_id, log=(lambda _spec, message: log(message)) if log else None)[0]
    if outcome.error is not None:
        raise outcome.error
    return outcome.run_dir


@dataclass
class RunOutcome:
    """What became of one run of a pack: "done", "failed" (``message`` says why; error.json
    holds the traceback when the run started) or "busy" (another process trains it; left to
    that process). ``error`` is the exception that ``run`` raises for it."""

    spec: RunSpec
    status: str
    run_dir: Path
    message: str = ""
    wall_time: float = 0.0
    error: BaseException | None = field(default=None, repr=False)


PackLog = Callable[[RunSpec, str], None]


@dataclass
class _Member:
    """A run of a pack, locked and ready to train."""

    spec: RunSpec
    run_dir: Path
    log: Log
    start: Start | None = None
    started_at: float = field(default_factory=time.monotonic)


def run_pack(specs: Sequence[RunSpec], out_root: Path | str, *, job_id: str | None = None,
             log: PackLog | None = None) -> list[RunOutcome]:
    """Train ``specs`` (compatible: invbench.packing) as one pack and return one outcome per
    spec, in order. One run's failure never stops its pack-mates: a run that cannot start,
    is busy elsewhere or diverges fails (or is left) alone.

    Each run keeps its own directory, lock, checkpoint and records, written exactly as a run
    alone writes them; runs done already are skipped. Runs that resume at different steps
    (a pack interrupted while writing its checkpoints, a retry) train as separate packs,
    one per starting step.
    """
    pack_log: PackLog = log or (lambda spec, message: None)
    outcomes: dict[int, RunOutcome] = {}
    with contextlib.ExitStack() as locks:
        members: dict[int, _Member] = {}
        for index, spec in enumerate(specs):
            run_dir = Path(out_root) / spec.dirname
            member_log: Log = lambda message, spec=spec: pack_log(spec, message)
            try:
                ready = _prepare(spec, run_dir, locks, member_log)
            except RunBusyError as exc:
                outcomes[index] = RunOutcome(spec, "busy", run_dir, str(exc), error=exc)
                continue
            except Exception as exc:  # e.g. its directory holds another run: that run alone fails
                outcomes[index] = RunOutcome(spec, "failed", run_dir,
                                             f"run {spec.dirname} could not start: {type(exc).__name__}: {exc}",
                                             error=exc)
                continue
            if ready:
                members[index] = _Member(spec, run_dir, member_log)
            else:
                outcomes[index] = RunOutcome(spec, "done", run_dir)
        outcomes.update(_train_members(members, job_id))
    return [outcomes[index] for index in range(len(specs))]


def _prepare(spec: RunSpec, run_dir: Path, locks: contextlib.ExitStack, log: Log) -> bool:
    """Lock the run, settle a done record, claim spec.json: True when the run must train
    (its lock then stays held in ``locks``), False when it is done."""
    current: list[dict] = []  # the data source, resolved at most once

    def source() -> dict:
        if not current:
            current.append(data_source(spec))
        return current[0]

    done, _ = check_done(run_dir, spec.run_id)
    if done is not None and not _outdated(spec, done, source):  # no lock needed: nothing is written
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        held.enter_context(run_lock(run_dir))
        action = _settle_done(spec, run_dir, source, log)
        if action == "done":
            return False
        if action == "set aside":  # the run done on other data moved away (its lock with it): afresh
            held.close()
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(run_lock(run_dir))
        # Under the lock, no live process writes this run's files: their temporaries are leftovers.
        remove_stale_temporaries(run_dir, own=RUN_FILES)
        _claim_spec(spec, run_dir, log)
        (run_dir / ERROR).unlink(missing_ok=True)
        locks.enter_context(held.pop_all())
    return True


def _train_members(members: dict[int, _Member], job_id: str | None) -> dict[int, RunOutcome]:
    """Plan each run's start, then train them in packs of one starting step each."""
    outcomes: dict[int, RunOutcome] = {}
    groups: dict[int, dict[int, _Member]] = {}
    for index, member in members.items():
        try:
            member.start = _plan_start(member.spec, member.run_dir, resolve_device(member.spec.device))
        except Exception as exc:
            outcomes[index] = _fail(member, exc)
            continue
        groups.setdefault(member.start.step, {})[index] = member
    while groups:
        step = min(groups)
        restarted = _train_group(groups.pop(step), job_id, outcomes)
        if restarted:  # checkpoints that did not fit: those runs start over, as a pack of their own
            groups.setdefault(0, {}).update(restarted)
    return outcomes


def _train_group(group: dict[int, _Member], job_id: str | None, outcomes: dict[int, RunOutcome]
                 ) -> dict[int, _Member]:
    """Train one pack whose runs all start at one step; record outcomes; return the runs
    whose checkpoint did not fit the model (set aside: they must start over)."""
    indices = list(group)
    members = [group[i] for i in indices]
    for member in members:
        _write_started(member.run_dir, job_id, member.start)
    try:
        trainer = Trainer([m.spec for m in members], resolve_device(members[0].spec.device))
    except Exception as exc:
        for index, member in group.items():
            outcomes[index] = _fail(member, exc)
        return {}
    restarted: dict[int, _Member] = {}
    for r, member in enumerate(members):
        atomic_write_json(member.run_dir / DATASET, trainer.dataset_info(r))
        if member.start.state is None:
            continue
        try:
            trainer.resume(member.start.state, r)
        except Exception as exc:  # a checkpoint of another model shape, an optimizer that changed
            member.start = _restart(member.run_dir, f"{CHECKPOINT} does not fit the model "
                                    f"({type(exc).__name__}: {exc})", set_aside_file=CHECKPOINT)
            trainer.stop(r)  # trains again from step 0 in a pack of its own
            restarted[indices[r]] = member
    for r, member in enumerate(members):
        if indices[r] not in restarted:
            member.log(member.start.message(member.run_dir))
    live = [r for r in range(len(members)) if indices[r] not in restarted]
    try:
        _train_loop(trainer, members, live, indices, outcomes)
    except KeyboardInterrupt:
        # Ctrl-C is not the runs' failure: no error.json, so they read "stale" (not
        # "failed") and the next launch resumes each from its checkpoint.
        raise
    except Exception as exc:
        for r in live:
            if indices[r] not in outcomes:
                outcomes[indices[r]] = _fail(members[r], exc)
    return restarted


def _train_loop(trainer: Trainer, members: list[_Member], live: list[int], indices: list[int],
                outcomes: dict[int, RunOutcome]) -> None:
    spec = members[0].spec
    while True:
        if trainer.evaluation_due:
            records = trainer.evaluate()
            for r in live:
                if records[r] is None:
                    continue
                run_dir = members[r].run_dir
                append_jsonl(run_dir / METRICS, records[r])
                append_jsonl(run_dir / TIMING, {"step": trainer.steps_done, "wall_time": trainer.elapsed(r)})
                atomic_write_bytes(run_dir / CHECKPOINT, trainer.checkpoint_bytes(r))
            first = next((r for r in live if trainer.is_active(r)), None)
            if first is not None:
                pack = f" (pack of {len(live)})" if len(live) > 1 else ""
                members[first].log(Progress(f"step {trainer.steps_done}/{spec.steps}{pack}"))
        if trainer.finished:
            break
        for r in trainer.step():
            if r in live:
                outcomes[indices[r]] = _fail(members[r], FloatingPointError(trainer.failures[r]), traceback_text="")
    for r in live:
        if trainer.is_active(r):
            member = members[r]
            atomic_write_json(member.run_dir / DONE, {"run_id": member.spec.run_id, "time": time.time(),
                                                      "start": member.start.record(), **trainer.finish(r)})
            outcomes[indices[r]] = RunOutcome(member.spec, "done", member.run_dir,
                                              wall_time=time.monotonic() - member.started_at)


def _fail(member: _Member, exc: Exception, traceback_text: str | None = None) -> RunOutcome:
    """Write the run's error.json and the outcome that says where it is."""
    where = None
    try:
        atomic_write_json(member.run_dir / ERROR, {
            "type": type(exc).__name__, "message": str(exc),
            "traceback": traceback.format_exc() if traceback_text is None else traceback_text,
            "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
        })
    except OSError as write_error:  # a full disk: the run stays stale, and the error says why
        where = f"{ERROR} could not be written: {write_error}"
    error = RunFailedError(member.run_dir, f"{type(exc).__name__}: {exc}", where)
    error.__cause__ = exc
    return RunOutcome(member.spec, "failed", member.run_dir, str(error), error=error)


def data_source(spec: RunSpec) -> dict:
    """The data source that ``spec``'s data resolves to now (its dataset is built to know).

    Raises DataUnavailableError when no source can serve it, and when the data directory
    that the spec names cannot."""
    return dict(build_dataset(spec).source)


def _settle_done(spec: RunSpec, run_dir: Path, source: Callable[[], dict], log: Log) -> str:
    """Under the run's lock: "done" (nothing to do), "train", or "set aside" (the directory
    held a run done on another data source and was moved away)."""
    done, problem = check_done(run_dir, spec.run_id)
    if problem:
        aside = set_aside(run_dir / DONE)
        log(f"{run_dir.name}: {DONE} is invalid ({problem}): set aside as {aside.name}; the run goes on")
        return "train"
    if done is None:
        return "train"
    if not _outdated(spec, done, source):  # another process finished it meanwhile
        return "done"
    aside = set_aside(run_dir, f"data-{_name(done['source'])}")
    log(f"{run_dir.name} was done on {_describe(done['source'])}, but its data is now {_describe(source())}: "
        f"the old run is set aside as {aside.name}; training it again")
    return "set aside"


def _outdated(spec: RunSpec, done: dict, source: Callable[[], dict]) -> bool:
    """Whether a valid done record gives way to the data that the spec resolves to now."""
    return source_in_question(done["source"], spec.data_dir) and superseded(done["source"], source())


def _name(source: dict) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(source.get("name", "unknown")))


def _describe(source: dict) -> str:
    return f"{source.get('name', '?')} ({source.get('n_images', '?')} images)"


def _claim_spec(spec: RunSpec, run_dir: Path, log: Log) -> None:
    """Write spec.json; a spec.json that cannot be read is set aside, another run's is an error."""
    path = run_dir / SPEC
    if path.exists():
        try:
            recorded = read_json(path)
            problem = None if isinstance(recorded, dict) else "not a JSON object"
        except (OSError, ValueError) as exc:
            recorded, problem = None, f"{type(exc).__name__}: {exc}"
        if problem:
            aside = set_aside(path)
            log(f"{run_dir.name}: {SPEC} is broken ({problem}): set aside as {aside.name}")
        elif recorded.get("run_id") != spec.run_id:
            raise InvbenchError(f"{run_dir} holds a different run (its {SPEC} has another run id); move it away")
    atomic_write_json(path, spec.to_dict())


@dataclass
class Start:
    """How an attempt starts: afresh, resumed from a checkpoint, or restarted (and why)."""

    mode: str
    step: int = 0
    reason: str = ""
    state: dict | None = field(default=None, repr=False)  # the checkpoint to resume from

    def record(self) -> dict:
        out: dict[str, Any] = {"mode": self.mode, "step": self.step}
        if self.reason:
            out["reason"] = self.reason
        return out

    def message(self, run_dir: Path) -> str:
        if self.mode == RESUMED:
            return Progress(f"resuming {run_dir.name} at step {self.step}")
        if self.mode == RESTARTED:  # a note: the progress before it is gone
            return f"restarting {run_dir.name} from step 0: {self.reason}"
        return Progress(f"starting {run_dir.name}")


def _write_started(run_dir: Path, job_id: str | None, start: Start) -> None:
    atomic_write_json(run_dir / STARTED, {
        "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "job_id": job_id,
        "start": start.record(),
    })


def _plan_start(spec: RunSpec, run_dir: Path, device: torch.device) -> Start:
    """Resume from checkpoint.pt when every record up to its step can be kept; else start over.

    A checkpoint that cannot be loaded is set aside; so is a metrics.jsonl that lacks a
    record before the checkpoint (its model state is gone: only a new run can make it)."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        _keep_records(run_dir / METRICS, [])
        _keep_records(run_dir / TIMING, [])
        return Start(FRESH)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        problem = _checkpoint_problem(spec, state)
    except Exception as exc:  # torch.load raises many kinds on a garbage or truncated file
        problem = f"cannot be loaded ({type(exc).__name__}: {exc})"
    if problem:
        return _restart(run_dir, f"{CHECKPOINT} {problem}", set_aside_file=CHECKPOINT)
    step = state["step"]
    expected = evaluation_steps(spec, step)
    missing = sorted(set(expected) - set(_keep_records(run_dir / METRICS, expected, dry_run=True)))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        what = "is missing" if not (run_dir / METRICS).exists() else f"lacks the record(s) of step(s) {shown}"
        return _restart(run_dir, f"{METRICS} {what} (checkpoint at step {step})", set_aside_file=METRICS)
    _keep_records(run_dir / METRICS, expected)
    _keep_records(run_dir / TIMING, expected)
    return Start(RESUMED, step, state=state)


def _checkpoint_problem(spec: RunSpec, state: Any) -> str | None:
    if not isinstance(state, dict) or not {"run_id", "step", "model", "optimizer", "method",
                                           "elapsed"} <= set(state):
        return "is not a training checkpoint"
    if state.get("format") != CHECKPOINT_FORMAT:
        return "was written by an older invbench (another checkpoint format)"
    if state["run_id"] != spec.run_id:
        return "belongs to another run"
    if state["step"] not in evaluation_steps(spec, spec.steps):
        return f"is at step {state['step']!r}, which this run never checkpoints"
    return None


def _restart(run_dir: Path, reason: str, set_aside_file: str) -> Start:
    """Start over: the named file is set aside (when there is one), the other progress cleared."""
    path = run_dir / set_aside_file
    if path.exists():
        aside = set_aside(path)
        reason += f"; set aside as {aside.name}"
    for name in (CHECKPOINT, METRICS, TIMING):
        (run_dir / name).unlink(missing_ok=True)
    return Start(RESTARTED, 0, reason)


def _keep_records(path: Path, steps: list[int], dry_run: bool = False) -> list[int]:
    """Keep the first valid record of each step in ``steps``, in step order, and nothing else
    (no corrupt line, no duplicate, nothing after the checkpoint); return the steps kept.
    ``dry_run`` only reports which steps it would keep."""
    if not path.exists():
        return []
    wanted = set(steps)
    kept: dict[int, str] = {}
    for _, record, raw in iter_jsonl(path):
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and step in wanted and step not in kept:
            kept[step] = raw if raw.endswith("\n") else raw + "\n"
    if not dry_run:
        atomic_write_bytes(path, "".join(kept[s] for s in sorted(kept)).encode())
    return sorted(kept)


def load_records(run_dir: Path) -> list[dict]:
    return [record for _, record, _ in iter_jsonl(run_dir / METRICS) if record is not None]


def done_on_other_data(runs: list[tuple[RunSpec, Path]]) -> list[RunSpec]:
    """The specs among done ``runs`` (spec, run directory) whose result gives way to the data
    they resolve to now (see _outdated). Each distinct dataset is built once, and only for
    runs whose source is in question."""
    sources: dict[str, dict] = {}

    def resolved(spec: RunSpec) -> dict:
        if spec.data_key not in sources:
            sources[spec.data_key] = data_source(spec)
        return sources[spec.data_key]

    out = []
    for spec, run_dir in runs:
        done, _ = check_done(run_dir, spec.run_id)
        if done is not None and _outdated(spec, done, lambda spec=spec: resolved(spec)):
            out.append(spec)
    return out
