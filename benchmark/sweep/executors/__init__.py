"""Executors run a sweep's specs: inline (this process), local (worker processes), slurm.

Each is imported only when asked for, so `invbench sweep status` of a local sweep never
imports submitit.
"""

from __future__ import annotations

import importlib

# kind -> (module, class, what it does): the one list of executor kinds.
_KINDS = {
    "inline": ("inline", "InlineExecutor", "one run after another in this process, for debugging"),
    "local": ("local", "LocalExecutor", "worker processes on this machine"),
    "slurm": ("slurm", "SlurmExecutor", "SLURM job arrays, through submitit"),
}
EXECUTORS = tuple(_KINDS)


def describe_executors() -> str:
    return "; ".join(f"{kind}: {text}" for kind, (_, _, text) in _KINDS.items())


def executor_class(kind: str):
    """The executor class of ``kind``; KeyError when there is none."""
    module, name, _ = _KINDS[kind]
    return getattr(importlib.import_module(f"invbench.sweep.executors.{module}"), name)
