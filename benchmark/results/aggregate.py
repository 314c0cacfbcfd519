"""Selected values per trial -> leaderboard cells: mean +- standard error over trials.

Gulrajani & Lopez-Paz (2021) report mean +- standard error over trials (data seeds) per
test environment, and the average over environments. We add the worst environment
(per trial, the lowest accuracy or highest MSE among the test environments, then
mean +- SE over trials) and the number of trials in every row and, when it differs, in
every cell. The average and the worst are computed per trial and only over trials
that have a value in every environment column, so they never mix trial sets.

A cell with no value says why: "no runs", "diverged (k run(s): the loss became
non-finite)", "failed (k run(s) ...)", "runs unfinished (k)", "needs runs that were not
launched ...", "no val split ...", or another strategy's reason.

Which test-environment sets are reported: every single-environment set, and a set of
several environments only when one of its environments has no single-environment runs
(so the {t, v} runs of leave-one-out serve as helpers and are not columns of their own).
A column is named by its environment, or "env [test a+b]" when the run held out several.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from invbench.metrics import ACCURACY, metric as metric_meaning
from invbench.results.load import Results
from invbench.results.selection import DEFAULT_SELECTION, TRAIN_ENVS, Missing, SelectionStrategy, candidates_from

AVG, WORST = "avg", "worst"


@dataclass(frozen=True)
class Cell:
    mean: float | None = None
    se: float | None = None  # None when n < 2
    n: int = 0
    note: str = ""  # why the cell is empty, or what is partial about it
    metric: str = ACCURACY.name  # its meaning (display scale, direction) is invbench.metrics.metric(metric)


@dataclass
class Table:
    """One leaderboard: a (dataset, source) pair, methods as rows."""

    dataset: str
    source: str
    metric: str  # "acc" or "mse"
    columns: list[str]  # the value columns, in order (envs, avg, worst, extras)
    rows: dict[str, tuple[int, dict[str, Cell]]]  # method -> (trials, column -> cell)

    @property
    def title(self) -> str:
        return f"{self.dataset}, source {self.source}, test {metric_meaning(self.metric).heading}"


@dataclass
class Leaderboard:
    selection: str  # the strategy's name
    selection_title: str
    tables: list[Table]
    per_trial: Any  # DataFrame: dataset, source, method, column, metric, trial, value, run, step
    summary: str  # what was loaded and left out
    notes: list[str] = field(default_factory=list)


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample standard deviation / sqrt(n)); SE is None for n < 2."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def column_label(test_envs: tuple[str, ...], env: str) -> str:
    return env if len(test_envs) == 1 else f"{env} [test {'+'.join(test_envs)}]"


def _reported_sets(sets: set[tuple[str, ...]], env_order: list[str]) -> list[tuple[str, ...]]:
    singles = {s[0] for s in sets if len(s) == 1}
    keep = [s for s in sets if len(s) == 1 or not all(e in singles for e in s)]
    rank = {e: i for i, e in enumerate(env_order)}
    return sorted(keep, key=lambda s: (len(s), [rank.get(e, 1 << 30) for e in s]))


def build_leaderboard(results: Results, strategy: SelectionStrategy) -> Leaderboard:
    import pandas as pd

    candidates = candidates_from(results)
    runs = results.runs
    per_trial_rows: list[dict] = []
    tables: list[Table] = []
    groups = sorted({(r.dataset, r.source) for r in runs.itertuples(index=False)})
    # Cells known only from unfinished runs still get a row, saying so.
    for (dataset, source, _method, _tests) in results.unfinished_cells:
        if source is not None and (dataset, source) not in groups:
            groups.append((dataset, source))
    for dataset, source in sorted(groups):
        sub = runs[(runs["dataset"] == dataset) & (runs["source"] == source)]
        env_order = list(sub["env_names"].iloc[0]) if len(sub) else []
        metric = sub["score"].iloc[0] if len(sub) else ACCURACY.name
        test_sets = set(map(tuple, sub["test_envs"]))
        unfinished_here: dict[tuple, dict[str, int]] = {}
        for (d, s, m, t), k in results.unfinished_cells.items():
            if d == dataset and (s == source or s is None):
                why = results.unfinished_why.get((d, s, m, t), {"unfinished": k})
                here = unfinished_here.setdefault((m, t), {})
                for kind, n in why.items():
                    here[kind] = here.get(kind, 0) + n
        test_sets |= {t for (_, t) in unfinished_here}
        reported = _reported_sets(test_sets, env_order)
        env_columns = [(t, e, column_label(t, e)) for t in reported for e in t]
        methods = sorted(set(sub["method"]) | {m for (m, _) in unfinished_here})
        rows: dict[str, tuple[int, dict[str, Cell]]] = {}
        extra_names: set[str] = set()
        for method in methods:
            trials = sorted({k[3] for k in candidates if k[:3] == (dataset, source, method)})
            cells: dict[str, Cell] = {}
            by_trial: dict[int, dict[str, float]] = {t: {} for t in trials}
            extras_by_col: dict[str, list[float]] = {}
            for test_envs, env, label in env_columns:
                values, reasons = [], []
                for trial in trials:
                    pool = candidates[(dataset, source, method, trial)]
                    if not any(c.test_envs == test_envs for c in pool):
                        continue
                    choice = strategy.select(pool, test_envs, env)
                    if isinstance(choice, Missing):
                        reasons.append(choice.reason)
                        continue
                    values.append(choice.value)
                    by_trial[trial][label] = choice.value
                    per_trial_rows.append({"dataset": dataset, "source": source, "method": method,
                                           "column": label, "metric": metric, "trial": trial,
                                           "value": choice.value, "run": choice.run, "step": choice.step})
                    for name, value in choice.extras.items():
                        if name == TRAIN_ENVS and len(env_columns) > 1:
                            continue  # one train column per test env would bury the table
                        extras_by_col.setdefault((name, label), []).append(value)
                        per_trial_rows.append({"dataset": dataset, "source": source, "method": method,
                                               "column": f"{name} ({label})", "metric": name, "trial": trial,
                                               "value": value, "run": choice.run, "step": choice.step})
                cells[label] = _cell(values, reasons, metric, unfinished_here.get((method, test_envs), {}))
            if len(env_columns) >= 2:
                labels = [label for _, _, label in env_columns]
                complete = [t for t in trials if all(label in by_trial[t] for label in labels)]
                worst = min if metric_meaning(metric).higher_is_better else max
                if complete:
                    note = "" if len(complete) == len(trials) else \
                        f"over the {len(complete)} trial(s) with every environment"
                    for name, fn in ((AVG, lambda xs: sum(xs) / len(xs)), (WORST, worst)):
                        m, se = mean_se([fn([by_trial[t][label] for label in labels]) for t in complete])
                        cells[name] = Cell(m, se, len(complete), note, metric)
                else:
                    reason = "needs a value in every environment column"
                    cells[AVG] = cells[WORST] = Cell(note=reason, metric=metric)
            for (name, label), values in extras_by_col.items():
                key = name if len(env_columns) == 1 else f"{name} ({label})"
                extra_names.add(key)
                m, se = mean_se(values)
                cells[key] = Cell(m, se, len(values), "", metric if name == TRAIN_ENVS else name)
            n_trials = len({t for t in trials if by_trial[t]})
            rows[method] = (n_trials, cells)
        columns = [label for _, _, label in env_columns]
        if len(env_columns) >= 2:
            columns += [AVG, WORST]
        columns += sorted(extra_names, key=lambda name: (not name.startswith(TRAIN_ENVS), name))
        tables.append(Table(dataset, source, metric, columns, rows))
    per_trial = pd.DataFrame(per_trial_rows, columns=["dataset", "source", "method", "column", "metric",
                                                      "trial", "value", "run", "step"])
    notes = [f"{line}" for line in results.skipped_lines]
    return Leaderboard(strategy.name, strategy.title, tables, per_trial, results.summary(), notes)


# Why a cell's runs were left out, in the order its note names them: the note of a cell
# without a value, and of a cell whose value lacks those runs.
LEFT_OUT_EMPTY = {"diverged": "diverged ({n} run(s): the loss became non-finite)",
                  "failed": "failed ({n} run(s): see their error.json)",
                  "unfinished": "runs unfinished ({n})"}
LEFT_OUT_PARTIAL = {"diverged": "{n} diverged run(s) left out (the loss became non-finite)",
                    "failed": "{n} failed run(s) left out",
                    "unfinished": "{n} unfinished run(s) left out"}


def _left_out(why: dict[str, int], texts: dict[str, str]) -> str:
    return "; ".join(text.format(n=why[kind]) for kind, text in texts.items() if why.get(kind))


def _cell(values: list[float], reasons: list[str], metric: str, why: dict[str, int]) -> Cell:
    """``why``: the cell's runs left out as unfinished, by kind (diverged, failed, unfinished)."""
    if values:
        mean, se = mean_se(values)
        note = ""
        if reasons:
            note = f"{len(reasons)} trial(s) without a value: {'; '.join(sorted(set(reasons)))}"
        elif why:
            note = _left_out(why, LEFT_OUT_PARTIAL)
        return Cell(mean, se, len(values), note, metric)
    if reasons:
        return Cell(note="; ".join(sorted(set(reasons))), metric=metric)
    if why:
        return Cell(note=_left_out(why, LEFT_OUT_EMPTY), metric=metric)
    return Cell(note="no runs", metric=metric)


def collect(root, selection: str = DEFAULT_SELECTION, include_unfinished: bool = False) -> Leaderboard:
    """Load ``root`` and build its leaderboard with the named selection strategy."""
    from invbench.results.load import load_runs
    from invbench.results.selection import get_strategy

    strategy = get_strategy(selection)
    return build_leaderboard(load_runs(root, include_unfinished=include_unfinished), strategy)
