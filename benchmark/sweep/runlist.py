"""A sweep's expanded run list, stored beside its runs, so that `status` and `cancel` start
without the training stack.

Expanding a sweep needs the registries, so every method and dataset module, and torch:
seconds of start-up before the first line of a status. Whatever expands a sweep (`launch`,
or a `status` that found no list) stores the specs in OUT/.invbench/runlists/NAME.json with
a key; `status` and `cancel` read them back when the key still matches, and expand
otherwise. The key hashes everything the expansion depends on: the sweep's settings
(without its executor) and the source files of invbench, of its methods and datasets and
of the INVBENCH_PLUGINS modules (their paths, sizes and modification times), so an edited
default is never hidden behind an old list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable

from invbench.io import atomic_write_json, read_json
from invbench.sweep.schema import SweepConfig

RUNLISTS = Path(".invbench") / "runlists"
CODE_PACKAGES = ("invbench", "invbench.methods", "invbench.datasets")
PLUGINS_ENV = "INVBENCH_PLUGINS"  # the registry's variable (invbench.registry, not imported: it is not needed)


def sweep_specs(config: SweepConfig, *, note: Callable[[str], None] | None = None) -> list:
    """The sweep's specs: from its stored run list when that is current, else expanded (and
    stored, when the sweep's folder exists)."""
    stored = read_runlist(config)
    if stored is not None:
        return stored
    from invbench.sweep.expansion import expand

    specs = expand(config, note=note)
    if config.out_root.is_dir():
        store_runlist(config, specs)
    return specs


def runlist_path(config: SweepConfig) -> Path:
    return config.out_root / RUNLISTS / f"{config.name}.json"


def store_runlist(config: SweepConfig, specs: list) -> None:
    """Store the expansion; a folder that cannot be written only costs the next status its speed."""
    try:
        atomic_write_json(runlist_path(config), {"key": runlist_key(config), "specs": [s.to_dict() for s in specs]})
    except OSError:
        pass


def read_runlist(config: SweepConfig) -> list | None:
    """The stored specs, or None when there are none, they are unreadable or out of date."""
    try:
        stored = read_json(runlist_path(config))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != runlist_key(config):
        return None
    from invbench.spec import RunSpec

    try:
        specs = [RunSpec.from_dict(data) for data in stored["specs"]]
        if any(spec.run_id != data["run_id"] for spec, data in zip(specs, stored["specs"])):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return specs


def runlist_key(config: SweepConfig) -> str:
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("executor", "source")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(os.environ.get(PLUGINS_ENV, "").encode())
    for entry in _code_files():
        digest.update(repr(entry).encode())
    return digest.hexdigest()


def _code_files() -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every Python file the expansion may run."""
    folders: list[str] = []
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)  # finds, never runs, the package
        folders += list(spec.submodule_search_locations or []) if spec else [f"missing:{name}"]
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        # the top-level package or module, found without importing anything
        spec = importlib.machinery.PathFinder.find_spec(name.split(".")[0])
        if spec is None:
            folders.append(f"missing:{name}")
        elif spec.submodule_search_locations:
            folders += list(spec.submodule_search_locations)
        elif spec.origin:
            folders.append(spec.origin)
    files: list[tuple[str, int, int]] = [(folder, 0, 0) for folder in folders]
    for folder in folders:
        paths = [folder] if folder.endswith(".py") else sorted(
            os.path.join(root, f) for root, dirs, names in os.walk(folder) if "__pycache__" not in root
            for f in names if f.endswith(".py"))
        for path in paths:
            try:
                info = os.stat(path)
            except OSError:
                files.append((path, -1, -1))
                continue
            files.append((path, info.st_size, info.st_mtime_ns))
    return files

