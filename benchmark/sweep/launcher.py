"""launch, status, retry and cancel over a sweep's runs.

``launch`` starts only what is neither done, queued, running nor failed (so it resumes stale
and cancelled runs); run it again at any time: it reattaches to what is alive and never
starts a run twice (a run's lock is a second guard should two launchers race); it gives a
done run whose spec.json was lost its spec back. Failed runs wait for ``retry``, since a run
that raised usually raises again until something is fixed; ``retry`` starts failed, stale
and cancelled runs only. Both group the runs they start into packs (invbench.packing; a
retry packs only the runs it starts) and print the time they expect before starting
(invbench.sweep.estimate). Everything is checked before
anything is submitted: the sweep file (schema.py), its names (expansion.py), then what only
this machine and the data can tell (preflight.py). `status` and `cancel` read the run list
that `launch` stored (runlist.py) instead of expanding.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Callable, TextIO

from invbench.packing import make_packs
from invbench.sweep.executors import executor_class
from invbench.sweep.expansion import expand
from invbench.sweep.launches import job_order, mark_cancelled, read_launch
from invbench.sweep.preflight import check_local_device, check_output, preflight
from invbench.sweep.progress import eta_seconds, format_duration
from invbench.sweep.runlist import store_runlist, sweep_specs
from invbench.sweep.schema import SweepConfig
from invbench.sweep.state import (CANCELLED, DONE_STATE, FAILED, NOT_LAUNCHED, QUEUED, RUNNING, STALE, STATES,
                                   RunState, run_states)

SHOWN = 5  # runs named in a one-line note
LAUNCHABLE = {"launch": (NOT_LAUNCHED, STALE, CANCELLED), "retry": (FAILED, STALE, CANCELLED)}


def make_executor(config: SweepConfig):
    return executor_class(config.executor.kind)(config.executor, config.out_root, config.name)


def launch(config: SweepConfig, *, mode: str = "launch", stream: TextIO | None = None,
           before_submit: Callable[[], None] | None = None) -> int:
    """Start the sweep's launchable runs; 0 when every run it started finished, 1 otherwise.

    ``before_submit`` runs once everything is validated, before anything is submitted (the
    commands keep the launch's flags with the runs there)."""
    stream = stream or sys.stderr
    specs = expand(config, note=lambda line: print(line, file=stream))
    executor = make_executor(config)
    executor.check()
    check_local_device(config)
    check_output(config.out_root)
    states = run_states(specs, config.out_root)
    to_run = [s.spec for s in states if s.state in LAUNCHABLE[mode]]
    if mode == "launch":
        from invbench.runner import done_on_other_data

        redo = done_on_other_data([(s.spec, s.run_dir) for s in states if s.state == DONE_STATE])
        if redo:
            print(f"{len(redo)} done run(s) were trained on another data source than their data resolves to "
                  "now: they run again (the old ones are set aside, not deleted)", file=stream)
        to_run += redo
    preflight(to_run)
    if before_submit is not None:
        before_submit()
    if mode == "launch":
        _restore_specs(states, stream)
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
    packs = make_packs(to_run, config.executor.pack_size, executor.workers(),
                       memory_per_worker=executor.memory_per_worker)
    _print_estimate(executor, packs, stream)
    job_ids = executor.submit(packs)
    if config.executor.kind == "slurm":
        print(f"submitted job array {_array_id(job_ids)} ({len(job_ids)} task(s)); "
              f"`invbench sweep status` follows it", file=stream)
        return 0
    after_states = run_states(specs, config.out_root)
    after = Counter(s.state for s in after_states)
    print(f"sweep {config.name}: {_counts_line(after)}", file=stream)
    # A run this launch started that neither finished nor failed (its worker was killed, the
    # disk filled up) is the launch's failure too; runs that another process trains are not.
    launched = {spec.dirname for spec in to_run}
    lost = [s for s in after_states if s.spec.dirname in launched and s.state in (STALE, NOT_LAUNCHED)]
    if lost:
        print(f"{len(lost)} run(s) did not finish: {', '.join(s.spec.dirname for s in lost)}; "
              "`invbench sweep launch` resumes them", file=stream)
    return 1 if after[FAILED] or lost else 0


def _print_estimate(executor, packs: list[list[Any]], stream: TextIO) -> None:
    """The launch's time, measured with the workers' torch threads (invbench.sweep.estimate)."""
    import torch

    from invbench.sweep.estimate import estimate

    threads = executor.threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tasks = executor.tasks(packs)
        found = estimate(packs, workers=executor.workers(), threads=threads, tasks=tasks)
    finally:
        torch.set_num_threads(before)
    if found is not None:
        print(found.line(), file=stream)


def _restore_specs(states: list[RunState], stream: TextIO) -> None:
    """A done run whose spec.json was deleted or garbled gets it back from the sweep (its
    done.json names the run), so that collect reads it again."""
    from invbench.rundir import restore_spec

    restored = [(s.spec.dirname, problem) for s in states if s.state == DONE_STATE
                for problem in [restore_spec(s.run_dir, s.spec)] if problem]
    if restored:
        shown = "; ".join(f"{name} ({problem})" for name, problem in restored[:SHOWN])
        more = f"; and {len(restored) - SHOWN} more" if len(restored) > SHOWN else ""
        print(f"invbench: note: rewrote the spec.json of {len(restored)} done run(s) from the sweep, since their "
              f"done.json is valid for it: {shown}{more}", file=stream)


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
    # "cancelled" appears only once something was cancelled
    shown = [state for state in STATES if state != CANCELLED or counts[CANCELLED]]
    used = sorted({s.executor for s in states if s.executor}) or [config.executor.kind]
    lines = [f"sweep {config.name} ({config.out_root}): {len(states)} runs, executor {', '.join(used)}"]
    lines.append("  " + "  ".join(f"{state}: {counts[state]}" for state in shown))
    groups: dict[tuple[str, str], Counter] = {}
    for s in states:
        groups.setdefault((s.spec.dataset, s.spec.method), Counter())[s.state] += 1
    header = ["dataset", "method", *shown]
    rows = [[d, m, *(str(c[state]) for state in shown)] for (d, m), c in groups.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines.append("")
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    walls = [s.wall_time for s in states if s.state == DONE_STATE and s.wall_time is not None]
    percent = 100.0 * counts[DONE_STATE] / max(len(states), 1)
    mean = f"; mean run {format_duration(sum(walls) / len(walls))}" if walls else ""
    progress = f"progress: {counts[DONE_STATE]}/{len(states)} done ({percent:.0f}%){mean}"
    lines.append("")
    if counts[CANCELLED] and not counts[QUEUED] and not counts[RUNNING]:
        # nothing is on its way: an ETA would promise what nobody is running
        lines.append(f"{progress}; {counts[CANCELLED]} cancelled: `invbench sweep launch` resumes them")
    else:
        remaining = len(states) - counts[DONE_STATE] - counts[FAILED] - counts[CANCELLED]
        parallel = max(counts[RUNNING], 1)
        eta = eta_seconds(walls, remaining, parallel)
        cancelled = f"; {counts[CANCELLED]} cancelled" if counts[CANCELLED] else ""
        lines.append(f"{progress}{cancelled}; ETA {format_duration(eta)} at {parallel} run(s) at once")
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
        jobs = [f"{kind} {job_id}" for kind, job_id in
                sorted({(s.executor, s.job_id) for s in active}, key=lambda k: (k[0] or "", job_order(k[1])))]
        lines.append("")
        lines.append(f"active jobs: {', '.join(jobs[:8])}{' ...' if len(jobs) > 8 else ''}")
    return "\n".join(lines)


def cancel(config: SweepConfig) -> list[str]:
    """Stop the sweep's queued and running runs, in job-id order, and record the cancellation
    in their launch.json: they read "cancelled", and `launch` resumes them."""
    states = run_states(sweep_specs(config), config.out_root)

    chosen = [s for s in states if s.state in (QUEUED, RUNNING) and s.executor]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(chosen, key=lambda s: (s.executor, job_order(s.job_id or ""))):
        launch = read_launch(s.run_dir)
        if launch is not None:
            by_kind.setdefault(s.executor, []).append(launch)
    # recorded first: a run whose job is still alive reads queued or running whatever the
    # record says, and one whose job is gone is never mistaken for stale in between
    for s in chosen:
        mark_cancelled(s.run_dir)
    messages = []
    for kind in sorted(by_kind):
        messages += executor_class(kind).cancel(by_kind[kind])
    if chosen:
        messages.append(f"{len(chosen)} run(s) cancelled; `invbench sweep launch` resumes them")
    return messages
