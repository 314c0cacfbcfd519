"""launch, status, retry and cancel over a sweep's runs.

``launch`` starts only what is neither done, queued, running nor failed; run it again at any
time: it reattaches to what is alive and never starts a run twice (a run's lock is a second
guard should two launchers race). Failed runs wait for ``retry``, since a run that raised
usually raises again until something is fixed; ``retry`` starts failed and stale runs only.
Everything is checked before anything is submitted: the sweep file (schema.py), its names
(expansion.py), then what only this machine and the data can tell (preflight.py). `status`
and `cancel` read the run list that `launch` stored (runlist.py) instead of expanding.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, TextIO

from invbench.sweep.executors import executor_class
from invbench.sweep.expansion import expand
from invbench.sweep.launches import read_launch
from invbench.sweep.preflight import check_local_device, check_output, preflight
from invbench.sweep.progress import eta_seconds, format_duration
from invbench.sweep.runlist import store_runlist, sweep_specs
from invbench.sweep.schema import SweepConfig
from invbench.sweep.state import (DONE_STATE, FAILED, NOT_LAUNCHED, QUEUED, RUNNING, STALE, STATES, RunState,
                                   run_states)

LAUNCHABLE = {"launch": (NOT_LAUNCHED, STALE), "retry": (FAILED, STALE)}


def make_executor(config: SweepConfig):
    return executor_class(config.executor.kind)(config.executor, config.out_root, config.name)


def launch(config: SweepConfig, *, mode: str = "launch", stream: TextIO | None = None) -> int:
    """Start the sweep's launchable runs; 0 when nothing failed, 1 otherwise."""
    stream = stream or sys.stderr
    specs = expand(config, note=lambda line: print(line, file=stream))
    executor = make_executor(config)
    executor.check()
    check_local_device(config)
    check_output(config.out_root)
    states = run_states(specs, config.out_root)
    to_run = [s.spec for s in states if s.state in LAUNCHABLE[mode]]
    preflight(to_run)
    if to_run or config.out_root.is_dir():
        store_runlist(config, specs)  # `status` and `cancel` read it instead of expanding again
    counts = Counter(s.state for s in states)
    print(f"sweep {config.name} ({config.out_root}): {len(specs)} runs; {_counts_line(counts)}", file=stream)
    if mode == "launch" and counts[FAILED]:
        print(f"{counts[FAILED]} failed run(s) are left as they are: `invbench sweep retry` runs them again",
              file=stream)
    if not to_run:
        print("nothing to launch", file=stream)
        return 1 if counts[FAILED] else 0
    print(f"{mode}: {len(to_run)} run(s) with the {config.executor.kind} executor", file=stream)
    job_ids = executor.submit(to_run)
    if config.executor.kind == "slurm":
        print(f"submitted job array {_array_id(job_ids)} ({len(job_ids)} task(s)); "
              f"`invbench sweep status` follows it", file=stream)
        return 0
    after = Counter(s.state for s in run_states(specs, config.out_root))
    print(f"sweep {config.name}: {_counts_line(after)}", file=stream)
    return 1 if after[FAILED] else 0


def _array_id(job_ids: list[str]) -> str:
    mains = sorted({job_id.split("_")[0] for job_id in job_ids})
    return ", ".join(mains)


def _counts_line(counts: Counter) -> str:
    return ", ".join(f"{state} {counts[state]}" for state in STATES if counts[state])


def status(config: SweepConfig) -> tuple[str, list[RunState]]:
    """A report: counts per state, per dataset and method, failed and stale runs with their
    reason, progress and ETA."""
    states = run_states(sweep_specs(config), config.out_root)
    return render_status(config, states), states


def render_status(config: SweepConfig, states: list[RunState]) -> str:
    counts = Counter(s.state for s in states)
    used = sorted({s.executor for s in states if s.executor}) or [config.executor.kind]
    lines = [f"sweep {config.name} ({config.out_root}): {len(states)} runs, executor {', '.join(used)}"]
    lines.append("  " + "  ".join(f"{state}: {counts[state]}" for state in STATES))
    groups: dict[tuple[str, str], Counter] = {}
    for s in states:
        groups.setdefault((s.spec.dataset, s.spec.method), Counter())[s.state] += 1
    header = ["dataset", "method", *STATES]
    rows = [[d, m, *(str(c[state]) for state in STATES)] for (d, m), c in groups.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines.append("")
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    walls = [s.wall_time for s in states if s.state == DONE_STATE and s.wall_time is not None]
    remaining = len(states) - counts[DONE_STATE] - counts[FAILED]
    parallel = max(counts[RUNNING], 1)
    eta = eta_seconds(walls, remaining, parallel)
    percent = 100.0 * counts[DONE_STATE] / max(len(states), 1)
    mean = f"; mean run {format_duration(sum(walls) / len(walls))}" if walls else ""
    lines.append("")
    lines.append(f"progress: {counts[DONE_STATE]}/{len(states)} done ({percent:.0f}%){mean}; "
                 f"ETA {format_duration(eta)} at {parallel} run(s) at once")
    for state in (FAILED, STALE):
        chosen = [s for s in states if s.state == state]
        if not chosen:
            continue
        lines.append("")
        lines.append(f"{state}:")
        for s in chosen:
            job = f" [{s.executor} job {s.job_id}]" if s.job_id else ""
            lines.append(f"  {s.spec.dirname}{job}: {s.reason}")
            lines += ["      " + line for line in s.tail.splitlines()]
    active = [s for s in states if s.state in (QUEUED, RUNNING) and s.job_id]
    if active:
        jobs = sorted({f"{s.executor} {s.job_id}" for s in active})
        lines.append("")
        lines.append(f"active jobs: {', '.join(jobs[:8])}{' ...' if len(jobs) > 8 else ''}")
    return "\n".join(lines)


def cancel(config: SweepConfig) -> list[str]:
    """Stop the sweep's queued and running runs (they become stale; `launch` resumes them)."""
    states = run_states(sweep_specs(config), config.out_root)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for s in states:
        if s.state in (QUEUED, RUNNING) and s.executor:
            launch = read_launch(s.run_dir)
            if launch is not None:
                by_kind.setdefault(s.executor, []).append(launch)
    messages = []
    for kind, launches in by_kind.items():
        messages += executor_class(kind).cancel(launches)
    return messages
