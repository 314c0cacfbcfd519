"""Files that are never half-written: atomic JSON and bytes writes, JSON lines, and the
removal of temporaries that a killed writer left behind."""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Collection, Iterator

TMP_SUFFIX = ".tmp"
_SEP = "~"  # in temporary names: never in a host name or in the names of the files we write


def temporary_path(path: Path) -> Path:
    """A unique temporary name beside ``path`` that says who writes it: ``.NAME~HOST~PID~RANDOM.tmp``,
    so that a later process can tell a dead writer's leftover from a live writer's file."""
    token = _SEP.join((path.name, socket.gethostname(), str(os.getpid()), secrets.token_hex(4)))
    return path.parent / f".{token}{TMP_SUFFIX}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename over ``path``.

    The temporary file is created with mode 0666 less the umask, as open() would create
    ``path`` itself (mkstemp's 0600 would hide results from teammates on a shared disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(directory: Path, own: Collection[str] = ()) -> list[Path]:
    """Remove temporaries in ``directory`` that no live writer will rename; return them.

    Temporaries of the files named in ``own`` are removed whoever wrote them: the caller
    holds the lock under which those files are written, so their writer is gone. Any other
    temporary is removed only when its writer ran on this machine and is dead.
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    host = socket.gethostname()
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(TMP_SUFFIX)) or not entry.is_file(follow_symlinks=False):
            continue
        fields = name[1:-len(TMP_SUFFIX)].split(_SEP)
        target = fields[0] if len(fields) == 4 else None
        if target is None:  # named by mkstemp (.NAME.RANDOM.tmp), as earlier versions wrote them
            stale = any(name.startswith(f".{mine}.") for mine in own)
        elif target in own:
            stale = True
        else:
            stale = fields[1] == host and fields[2].isdigit() and not pid_alive(int(fields[2]))
        if stale:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def append_jsonl(path: Path, record: Any) -> None:
    """Append one line and fsync: a crash loses at most the line being written."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    with open(path, "a") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any | None, str]]:
    """(line number, parsed record or None when corrupt, raw line) for every non-empty line."""
    with open(path, errors="replace") as handle:  # a garbage byte makes a corrupt line, not a crash
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw), raw
            except json.JSONDecodeError:
                yield number, None, raw
