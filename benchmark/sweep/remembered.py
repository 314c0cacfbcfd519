"""What a launch was given on the command line, kept with its runs.

`invbench sweep launch FILE --out DIR --trials 5` writes DIR/.invbench/sweeps/NAME.json
(before anything is submitted) with the sweep file's path and text and the flags given.
`status`, `retry`, `cancel` and the next `launch` read it back, so they need only the sweep:
`invbench sweep status FILE` (when DIR is the file's own out), `invbench sweep status FILE
--out DIR`, or the folder alone, `invbench sweep status DIR`. A flag given again wins; one
that changes which runs the sweep has (steps, trials, ...) gets a note saying so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from invbench.errors import ConfigError
from invbench.io import atomic_write_json, read_json

RECORDS = Path(".invbench") / "sweeps"
# Flags that decide which runs the sweep has: a different value addresses other runs.
ADDRESSING = ("steps", "eval_every", "trials", "hparam_draws")


def record_path(out_root: Path | str, name: str) -> Path:
    return Path(out_root) / RECORDS / f"{name}.json"


def remember(config: Any, overrides: dict[str, Any], text: str | None = None) -> None:
    """Keep the flags of this launch (None = not given) with the sweep's runs, and the sweep
    file's ``text`` (default: read from ``config.source``)."""
    given = {k: v for k, v in overrides.items() if v is not None and v != {}}
    source = Path(config.source) if config.source else None
    if text is None:
        text = source.read_text() if source is not None and source.is_file() else ""
    record = {"sweep": config.name, "file": str(source.resolve()) if source else "", "text": text,
              "overrides": given, "time": time.time()}
    path = record_path(config.out_root, config.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)


def recall(out_root: Path | str, name: str) -> dict | None:
    """The record of sweep ``name`` under ``out_root``; None when it was never launched there."""
    path = record_path(out_root, name)
    try:
        record = read_json(path)
    except (FileNotFoundError, NotADirectoryError):  # never launched there (or no folder at all)
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} (the launch's flags) is unreadable ({exc}); move it away and give the flags "
                          f"again") from None
    if not isinstance(record, dict) or not isinstance(record.get("overrides"), dict):
        raise ConfigError(f"{path} (the launch's flags) is not a sweep record; move it away and give the flags again")
    return record


def recorded_sweeps(folder: Path | str) -> list[str]:
    """Names of the sweeps launched into ``folder``."""
    return sorted(p.stem for p in (Path(folder) / RECORDS).glob("*.json"))


def merge(stored: dict[str, Any], given: dict[str, Any], note: Callable[[str], None]) -> dict[str, Any]:
    """The launch's flags, then this command's (None = not given) on top; SLURM settings
    merge key by key. A flag that changes which runs the sweep has gets a note."""
    merged = dict(stored)
    for key, value in given.items():
        if value is None:
            continue
        if key == "slurm":
            merged["slurm"] = {**(stored.get("slurm") or {}), **value}
            continue
        if key in ADDRESSING and key in stored and stored[key] != value:
            flag = "--" + key.replace("_", "-")
            note(f"{flag} {value} differs from the {flag} {stored[key]} the sweep was launched with: this "
                 f"addresses other runs than the launch's")
        merged[key] = value
    return merged

