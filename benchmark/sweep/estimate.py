"""The time estimate that `invbench sweep launch` prints before it starts: measured, not guessed.

For each kind of pack (invbench.packing.pack_key), one pack of the largest size the launch
uses is timed on this machine: ``invbench.trainer.seconds_per_pack_step`` runs a warm-up
step, then ``STEPS_TIMED`` steps of the whole pack, on the specs' device with the workers'
torch threads. A pack of that kind then takes its steps x that time (evaluations are not
timed: the estimate counts training steps). The packs are dealt to the workers in the
order they are queued, each to the first free one, as the local executor and a SLURM array
do; on SLURM a task takes the time of its packs together, and the line gives the longest
task too (timed here, on the launching machine, not on a compute node).

Rules that keep the measuring cheap:
- tiny launches are not timed (no line): when the launch holds fewer than ``TINY_FACTOR``
  times the pack steps that timing would run, measuring costs more than it tells;
- each kind is first probed: one run's setup, one warm-up step and one step. Timing m runs
  of a pack costs at most their setups and 1 + ``STEPS_TIMED`` steps each, under twice
  the probe's wall time per run. Each kind may spend its share of what is left of
  the budget: the whole pack is timed when it fits; else two parts of it (a third and two
  thirds of what fits, at least 4 runs) give a fixed cost per step plus a cost per run,
  extrapolated to the pack's runs (bounded by the larger part's time and that time scaled
  by the runs); else the part that fits (2-3 runs) scaled to the pack's runs (an upper
  bound: larger packs amortise more); else the probe's step x the pack's runs: an image
  model whose steps take seconds, or a pack whose setup is long, is never timed at length;
- the budget is ``BUDGET_S``, or ``BUDGET_PER_KIND_S`` per kind when there are many (at
  most ``MAX_BUDGET_S``): a part of 2 runs says little about a pack of 256;
- once the budget is spent, the kinds left are not timed: they are taken to cost the
  mean seconds per run-step of the kinds timed, and the line says so;
- a kind whose timing fails (a run that diverges at once) counts as not timed.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

STEPS_TIMED = 3
BUDGET_S = 5.0
BUDGET_PER_KIND_S = 1.25  # a launch of many kinds gets this much per kind, at most MAX_BUDGET_S
MAX_BUDGET_S = 30.0
TINY_FACTOR = 25

TimePack = Callable[..., float]  # (specs, steps=...) -> mean seconds of one step of the pack


@dataclass
class Estimate:
    runs: int
    packs: int
    largest_pack: int
    workers: int
    threads: int
    seconds: float  # until the last pack ends
    kinds: int
    timed: int
    extrapolated: int
    untimed: int
    tasks: int | None = None  # SLURM array tasks
    longest_task: float | None = None

    def line(self) -> str:
        packs = (f"{self.runs:,} runs, each alone," if self.largest_pack == 1 else
                 f"{self.runs:,} runs in {self.packs:,} packs of <= {self.largest_pack}")
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.tasks is None:
            where = f"on {self.workers} worker{'s' if self.workers != 1 else ''} x {threads}"
            took = f"about {duration(self.seconds)}"
        else:
            where = f"in {self.tasks:,} SLURM task{'s' if self.tasks != 1 else ''} x {threads}"
            took = (f"about {duration(self.longest_task or 0.0)} for the longest task, {duration(self.seconds)} in "
                    f"all at {self.workers} task(s) at once")
        return f"estimate: {packs} {where}: {took} ({self.how()})"

    def how(self) -> str:
        if self.timed == self.kinds:
            each = "the" if self.kinds == 1 else f"each of {self.kinds}"
            return f"timed {STEPS_TIMED} steps of {each} pack kind{'s' if self.kinds != 1 else ''} on this machine"
        parts = [f"timed {STEPS_TIMED} steps of {self.timed} of {self.kinds} pack kinds on this machine"]
        if self.extrapolated:
            parts.append(f"{self.extrapolated} scaled from part of their pack, as timing them in full would be long")
        if self.untimed:
            parts.append(f"{self.untimed} not timed, taken to cost the others' mean per run-step")
        return "; ".join(parts)


def duration(seconds: float) -> str:
    """'40 s', '12 min', '5 h 10 min'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def finish_time(durations: Sequence[float], workers: int) -> float:
    """When the last job ends, each job (in order) going to the first free worker."""
    free = [0.0] * max(1, min(workers, len(durations)))
    for seconds in durations:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free) if durations else 0.0


def _fitted(time_pack: TimePack, pack: Sequence[Any], fits: int) -> float:
    """A step of ``pack`` from two parts of it (about ``fits`` runs of timing in all): the line
    through their step times, at the pack's runs. A pack of many cheap runs (sufficient
    statistics, a linear model on a few rows) costs mostly a fixed overhead per step, which
    scaling one part by the runs would count again for every part. Kept between the larger
    part's time (a pack is never cheaper than part of it) and that time scaled by the runs."""
    small = fits // 3
    large = fits - small
    t_small = time_pack(list(pack[:small]), steps=STEPS_TIMED)
    t_large = time_pack(list(pack[:large]), steps=STEPS_TIMED)
    per_run = (t_large - t_small) / (large - small)
    return min(max(t_large + per_run * (len(pack) - large), t_large), t_large * len(pack) / large)


def is_tiny(packs: Sequence[Sequence[Any]], kinds: int) -> bool:
    """Whether the launch's pack steps are fewer than TINY_FACTOR times timing's."""
    pack_steps = sum(pack[0].steps for pack in packs)
    return pack_steps < TINY_FACTOR * kinds * (2 + 1 + STEPS_TIMED)


def estimate(packs: Sequence[Sequence[Any]], *, workers: int, threads: int,
             tasks: Sequence[Sequence[Sequence[Any]]] | None = None, time_pack: TimePack | None = None,
             budget_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> Estimate | None:
    """The estimate for ``packs`` run by ``workers`` at once (``tasks``: SLURM's packs per
    array task); None for a tiny launch. ``time_pack`` defaults to
    invbench.trainer.seconds_per_pack_step."""
    from invbench.packing import pack_key

    if not packs:
        return None
    if time_pack is None:
        from invbench.trainer import seconds_per_pack_step as time_pack
    kinds: dict[Hashable, Sequence[Any]] = {}  # kind -> its largest pack
    keys = [pack_key(pack[0]) for pack in packs]
    for key, pack in zip(keys, packs):
        if len(pack) > len(kinds.get(key, ())):
            kinds[key] = pack
    if is_tiny(packs, len(kinds)):
        return None
    if budget_s is None:
        budget_s = min(max(BUDGET_S, BUDGET_PER_KIND_S * len(kinds)), MAX_BUDGET_S)
    step_time: dict[Hashable, float] = {}  # seconds of one step of the kind's largest pack
    extrapolated = 0
    started = clock()
    for position, (key, pack) in enumerate(kinds.items()):
        left = budget_s - (clock() - started)
        if left <= 0:
            continue
        share = left / (len(kinds) - position)  # what this kind may spend, the kinds after it kept in mind
        try:
            probe_started = clock()
            probe = time_pack(list(pack[:1]), steps=1)
            # timing m runs costs at most their setups and 1 + STEPS_TIMED steps each: under
            # twice the probe's setup and 2 steps, per run
            per_run = 2 * (clock() - probe_started)
            fits = int(max(share - (clock() - probe_started), 0.0) // max(per_run, 1e-9))
            if fits >= len(pack):
                step_time[key] = time_pack(list(pack), steps=STEPS_TIMED)
            elif fits >= 4:  # two smaller packs of this kind: a fixed cost per step plus one per run
                step_time[key] = _fitted(time_pack, pack, fits)
                extrapolated += 1
            elif fits >= 2:  # a smaller pack of this kind, scaled: an upper bound (larger packs amortise more)
                step_time[key] = time_pack(list(pack[:fits]), steps=STEPS_TIMED) * len(pack) / fits
                extrapolated += 1
            else:
                step_time[key] = probe * len(pack)
                extrapolated += 1
        except Exception:  # a run that cannot even take a step: it fails at launch, not here
            continue
    if not step_time:
        return None
    per_run_step = sum(step_time[k] / len(kinds[k]) for k in step_time) / len(step_time)
    seconds = [pack[0].steps * step_time.get(key, per_run_step * len(kinds[key])) for key, pack in zip(keys, packs)]
    timed = len(step_time) - extrapolated
    untimed = len(kinds) - len(step_time)
    common = dict(runs=sum(map(len, packs)), packs=len(packs), largest_pack=max(map(len, packs)), threads=threads,
                  kinds=len(kinds), timed=timed, extrapolated=extrapolated, untimed=untimed)
    if tasks is None:
        return Estimate(workers=workers, seconds=finish_time(seconds, workers), **common)
    by_pack = {id(pack): s for pack, s in zip(packs, seconds)}
    task_seconds = [sum(by_pack[id(pack)] for pack in task) for task in tasks]
    return Estimate(workers=workers, seconds=finish_time(task_seconds, workers), tasks=len(tasks),
                    longest_task=max(task_seconds), **common)
