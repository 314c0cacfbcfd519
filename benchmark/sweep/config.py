"""Compatibility re-export only: the sweep file's handling was split into schema.py (keys,
loading, checking, overrides), expansion.py (specs) and preflight.py (checks before runs).
New code imports from those modules; this one adds nothing of its own."""

from invbench.sweep.expansion import MAX_RUNS, expand  # noqa: F401
from invbench.sweep.preflight import check_local_device, check_output, preflight  # noqa: F401
from invbench.sweep.schema import (DatasetEntry, ExecutorSettings, SlurmSettings, SweepConfig,  # noqa: F401
                                   apply_overrides, load_sweep, parse_sweep, shipped_sweeps)
from invbench.sweep.executors import EXECUTORS  # noqa: F401
