"""Checks that an output path can be written, made before any work that would write there.

Permission bits cannot tell (root passes os.access everywhere, and /proc refuses root too),
so the folder is created and a file written in it, and then both are removed again: a
command that stops later for another reason leaves nothing behind. Kept free of torch:
`invbench collect` checks its outputs with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from invbench.errors import ConfigError
from invbench.io import temporary_path


def check_folder(folder: str | Path, flag: str, what: str, *, shown: str | Path | None = None) -> None:
    """``what`` can be written into ``folder`` (given as ``flag``, shown as ``shown``, default
    ``folder``); ConfigError, one line, if not."""
    path = Path(os.path.abspath(folder))
    prefix = f"cannot write {what} to {shown or folder} ({flag})"

    try:
        existing = path
        while not existing.exists():
            existing = existing.parent
        is_folder = existing.is_dir()
    except OSError as exc:  # a parent that cannot even be looked into
        raise ConfigError(f"{prefix}: {_reason(exc)}; choose another {flag}") from None
    if not is_folder:
        raise ConfigError(f"{prefix}: {existing} is a file, not a folder")
    created = [p for p in [path, *path.parents] if p != existing and existing in p.parents]
    try:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{prefix}: cannot create {exc.filename or path} ({exc.strerror or exc}); "
                              f"choose another {flag}") from None
        probe = temporary_path(path / "write-probe")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"{prefix}: cannot create a file in {path} ({exc.strerror or exc}); "
                              f"choose another {flag}") from None
    finally:
        for made in created:  # deepest first; one that something else filled meanwhile stays
            try:
                made.rmdir()
            except OSError:
                break


def check_file(file: str | Path, flag: str, what: str) -> None:
    """``what`` can be written as ``file`` (given as ``flag``): its folder can be written and
    the path is no folder."""
    path = Path(file)
    if path.is_dir():
        raise ConfigError(f"cannot write {what} to {file} ({flag}): it is a folder; give a file name")
    check_folder(Path(os.path.abspath(path)).parent, flag, what, shown=file)


def _reason(exc: OSError) -> str:
    """strerror and the path it is about (which may be a parent of the one asked for)."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
