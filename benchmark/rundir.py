"""The run directory's vocabulary: file names, what the files say, and the run lock.

Kept free of torch so that the results and the launcher can read run directories without
importing the training stack. The runner writes these files; everything else reads them,
except that restore_spec rewrites the lost spec.json of a finished run.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

from invbench.errors import InvbenchError
from invbench.io import atomic_write_json, read_json

SPEC, DATASET, STARTED, METRICS, TIMING, CHECKPOINT, DONE, ERROR, LOCK = (
    "spec.json", "dataset.json", "started.json", "metrics.jsonl", "timing.jsonl",
    "checkpoint.pt", "done.json", "error.json", "lock",
)
# Written only by the process that holds the run's lock.
RUN_FILES = (SPEC, DATASET, STARTED, METRICS, TIMING, CHECKPOINT, DONE, ERROR)
# What a done record must hold to count: without them it cannot say which run finished,
# how far, or on which data.
DONE_FIELDS = {"run_id": str, "steps": int, "source": dict}
# What makes two data sources the same data (their location may differ).
SOURCE_IDENTITY = ("name", "n_images")
# The error type of a run whose loss became NaN or infinite: "diverged", not "failed".
DIVERGED_ERROR = "FloatingPointError"


class RunBusyError(InvbenchError):
    """Another process holds the run's lock: it is training this run right now."""


def check_done(run_dir: Path, run_id: str | None) -> tuple[dict | None, str | None]:
    """The one judge of done.json: (record, None) when it is valid, (None, None) when absent,
    (None, why) when present but invalid (unreadable, not JSON, fields missing, or another
    run's id). Only a valid record makes a run done; ``run_id`` None skips the id check."""
    try:
        record = read_json(Path(run_dir) / DONE)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None, "not valid JSON"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    missing = [key for key, kind in DONE_FIELDS.items()
               if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool)]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    if run_id is not None and record["run_id"] != run_id:
        return None, f"another run's (id {record['run_id'][:10]})"
    return record, None


def read_done(run_dir: Path, run_id: str | None) -> dict | None:
    """The run's valid done record, or None (absent or invalid: see check_done)."""
    return check_done(run_dir, run_id)[0]


def spec_run_id(run_dir: Path) -> str | None:
    """The run id that spec.json records, or None when it cannot be read."""
    try:
        spec = read_json(Path(run_dir) / SPEC)
    except (OSError, ValueError):
        return None
    run_id = spec.get("run_id") if isinstance(spec, dict) else None
    return run_id if isinstance(run_id, str) else None


def read_error(run_dir: Path) -> dict | None:
    try:
        error = read_json(Path(run_dir) / ERROR)
    except (OSError, ValueError):
        return None
    return error if isinstance(error, dict) else None


def run_status(run_dir: Path, run_id: str | None = None) -> str:
    """done, diverged, failed, started or missing: what the files say (the launcher adds
    liveness). ``run_id`` defaults to spec.json's."""
    run_dir = Path(run_dir)
    if read_done(run_dir, run_id if run_id is not None else spec_run_id(run_dir)) is not None:
        return "done"
    if (run_dir / ERROR).exists():
        error = read_error(run_dir) or {}
        return "diverged" if error.get("type") == DIVERGED_ERROR else "failed"
    if (run_dir / STARTED).exists():
        return "started"
    return "missing"


SET_ASIDE_STAMP = "%Y%m%dT%H%M%S"
_SET_ASIDE_NAME = re.compile(r"\.[A-Za-z0-9._-]+-\d{8}T\d{6}(\.\d+)?$")


def set_aside(path: Path, label: str = "broken") -> Path:
    """Rename ``path`` (a file or a whole run directory) to ``NAME.LABEL-TIME`` beside it and
    return the new path: kept for a person to look at, never deleted, never read again."""
    path = Path(path)
    stamp = time.strftime(SET_ASIDE_STAMP)
    for n in itertools.count():
        target = path.with_name(f"{path.name}.{label}-{stamp}{f'.{n}' if n else ''}")
        if not target.exists():
            break
    os.rename(path, target)
    return target


def is_set_aside(name: str) -> bool:
    """Whether a file or folder name is one that set_aside gave (readers skip those)."""
    return _SET_ASIDE_NAME.search(name) is not None


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


def source_in_question(recorded: Any, data_dir: str | None) -> bool:
    """Whether a done run must look at what its data resolves to now before it counts as
    done: when it was trained on a fallback subset (real data may be there now) or the
    request names a data directory (which must serve, and may hold other data). Otherwise
    a done run stays done without building any data."""
    return data_dir is not None or not isinstance(recorded, dict) or bool(recorded.get("subset"))


def superseded(recorded: Any, current: dict) -> bool:
    """Whether a done run's data source gives way to the one its data resolves to now: any
    other data does, except a fallback subset, which never displaces a result on real data."""
    if same_source(recorded, current):
        return False
    return not (current.get("subset") and isinstance(recorded, dict) and not recorded.get("subset"))


def same_source(recorded: Any, current: dict) -> bool:
    """Whether a done run's data source is the one the data resolves to now: the same data
    (name and number of images; where it lives may move without changing a result)."""
    return isinstance(recorded, dict) and all(recorded.get(key) == current.get(key) for key in SOURCE_IDENTITY)


def restore_spec(run_dir: Path, spec: Any) -> str | None:
    """Rewrite the spec.json of a run done for ``spec`` (its done.json is valid for the
    spec's run id, so the spec is known) when spec.json is missing or holds no run's spec;
    return what was wrong with it, or None when nothing was rewritten. A broken spec.json
    is set aside first; a run being trained now (its lock is held) is left alone."""
    run_dir = Path(run_dir)
    if _spec_problem(run_dir) is None or read_done(run_dir, spec.run_id) is None:
        return None
    try:
        with run_lock(run_dir):
            problem = _spec_problem(run_dir)  # again, under the lock
            if problem is None:
                return None
            if (run_dir / SPEC).exists():
                problem += f", set aside as {set_aside(run_dir / SPEC).name}"
            atomic_write_json(run_dir / SPEC, spec.to_dict())
            return problem
    except RunBusyError:
        return None


def _spec_problem(run_dir: Path) -> str | None:
    try:
        recorded = read_json(run_dir / SPEC)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    except ValueError:
        return "not valid JSON"
    if not isinstance(recorded, dict) or not isinstance(recorded.get("run_id"), str):
        return "no run's spec"
    return None
