"""Executors run a sweep's specs: inline (this process), local (worker processes), slurm.

Each is imported only when asked for, so `invbench sweep status` of a local sweep never
imports submitit.
"""

from __future__ import annotations

import importlib

_MODULES = {"inline": ("inline", "InlineExecutor"), "local": ("local", "LocalExecutor"),
            "slurm": ("slurm", "SlurmExecutor")}


def executor_class(kind: str):
    """The executor class of ``kind``; KeyError when there is none."""
    module, name = _MODULES[kind]
    return getattr(importlib.import_module(f"invbench.sweep.executors.{module}"), name)
