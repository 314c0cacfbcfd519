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

Runs that trained on every environment (an empty test set: the linear unit tests, the IRM
paper's pooled ERM) get a table of their own, never merged with the runs of the same
dataset that held an environment out: its columns are every environment's reported split
(the unit tests' shuffled "test" split), the average over environments (the unit tests'
metric) and the worst, then the extras, taken once per trial from the selected run. Every
table, and every per-trial value, carries its test set (``test_envs``: "sigma=5", "a+b",
or "none" when every environment trained), so that no two choices are ever compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from invbench.metrics import ACCURACY, metric as metric_meaning
from invbench.results.load import Results
from invbench.results.selection import DEFAULT_SELECTION, TRAIN_ENVS, Missing, SelectionStrategy, candidates_from
from invbench.splits import SPLITS, TRAIN

AVG, WORST = "avg", "worst"


def worst_of(metric: str):
    """min or max: the worst of several environments' values of ``metric``."""
    return min if metric_meaning(metric).higher_is_better else max
# The test_envs text of runs that trained on every environment, and of a table's columns
# that each hold out their own set (a table's average and worst over them).
NO_TEST_ENVS, EACH = "none", "each"
PER_TRIAL_COLUMNS = ["dataset", "source", "method", "column", "metric", "trial", "value", "run", "step", "test_envs"]


def test_envs_text(test_envs: tuple[str, ...]) -> str:
    """A test set as people and CSV files read it: "sigma=5", "a+b", or "none" (every environment trained)."""
    return "+".join(test_envs) if test_envs else NO_TEST_ENVS


@dataclass(frozen=True)
class Cell:
    mean: float | None = None
    se: float | None = None  # None when n < 2
    n: int = 0
    note: str = ""  # why the cell is empty, or what is partial about it
    metric: str = ACCURACY.name  # its meaning (display scale, direction) is invbench.metrics.metric(metric)


@dataclass
class Table:
    """One leaderboard: a (dataset, source) pair and one test-set choice, methods as rows.

    The choice (``test_envs``): "none" when every environment trained (each environment's
    reported split a column), one test set ("sigma=5", "a+b"), or "each" when every
    column holds out its own environment (DomainBed's tables).
    """

    dataset: str
    source: str
    metric: str  # "acc" or "mse"
    columns: list[str]  # the value columns, in order (envs, avg, worst, extras)
    rows: dict[str, tuple[int, dict[str, Cell]]]  # method -> (trials, column -> cell)
    test_envs: str = EACH
    column_test_envs: dict[str, str] = field(default_factory=dict)  # a column's test set, where not test_envs
    reported_split: str = ""  # with test_envs "none": the split every column reports

    @property
    def trained_on_every_env(self) -> bool:
        return self.test_envs == NO_TEST_ENVS

    @property
    def choice(self) -> str:
        """Which environments trained, for people; "" when each column holds out its own."""
        if self.trained_on_every_env:
            return "trained on every environment"
        if self.test_envs == EACH:
            return ""
        plural = "s" if "+" in self.test_envs else ""
        return f"test environment{plural} {self.test_envs}"

    @property
    def title(self) -> str:
        heading = metric_meaning(self.metric).heading
        if self.trained_on_every_env:
            split = f" on each environment's {self.reported_split} split" if self.reported_split else ""
            return f"{self.dataset}, source {self.source}, {self.choice}, {heading}{split}"
        choice = f"{self.choice}, " if self.choice else ""
        return f"{self.dataset}, source {self.source}, {choice}test {heading}"

    @property
    def name(self) -> str:
        """Names the table among a leaderboard's (its files' stem): dataset, source and, when
        every environment trained, so (a sweep may hold both choices)."""
        every = "-trained_on_every_env" if self.trained_on_every_env else ""
        return f"{self.dataset}-{self.source}{every}"

    def column_test_envs_of(self, column: str) -> str:
        """The test set of one column's values (its own, or the table's)."""
        return self.column_test_envs.get(column, self.test_envs)

    def per_trial_of(self, per_trial):
        """The rows of a leaderboard's per-trial frame that are this table's values."""
        sets = {self.test_envs, *self.column_test_envs.values()}
        return per_trial[(per_trial["dataset"] == self.dataset) & (per_trial["source"] == self.source)
                         & per_trial["test_envs"].isin(sets)]


@dataclass
class Leaderboard:
    selection: str  # the strategy's name
    selection_title: str
    tables: list[Table]
    per_trial: Any  # DataFrame: PER_TRIAL_COLUMNS (test_envs: the test set of the value's runs)
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
        # Runs with a test environment and runs that trained on every environment answer
        # different questions: never one table (the IRM paper's pooled ERM beside its IRM).
        held_out = {t for t in test_sets if t}
        if held_out:
            tables.append(_table(dataset, source, metric, env_order, held_out, _reported_sets(held_out, env_order),
                                 candidates, strategy, unfinished_here, per_trial_rows))
        if () in test_sets:
            tables.append(_table(dataset, source, metric, env_order, {()}, [()], candidates, strategy,
                                 unfinished_here, per_trial_rows))
    per_trial = pd.DataFrame(per_trial_rows, columns=PER_TRIAL_COLUMNS)
    notes = [f"{line}" for line in results.skipped_lines]
    return Leaderboard(strategy.name, strategy.title, tables, per_trial, results.summary(), notes)


def _table(dataset: str, source: str, metric: str, env_order: list[str], test_sets: set[tuple[str, ...]],
           reported: list[tuple[str, ...]], candidates: dict[tuple, list], strategy: SelectionStrategy,
           unfinished_here: dict[tuple, dict[str, int]], per_trial_rows: list[dict]) -> Table:
    """The table of one test-set choice: ``test_sets`` are its runs' (helpers included),
    ``reported`` the sets with columns. Appends its per-trial values to ``per_trial_rows``."""
    pooled = reported == [()]
    if pooled:  # every environment trained: each one's reported split is a column
        env_columns = [((), e, e) for e in env_order]
    else:
        env_columns = [(t, e, column_label(t, e)) for t in reported for e in t]
    table_envs = test_envs_text(reported[0]) if len(reported) == 1 else EACH
    column_envs = {label: test_envs_text(t) for t, _, label in env_columns}
    mine = lambda key: key[:2] == (dataset, source)
    methods = sorted({k[2] for k, pool in candidates.items() if mine(k) and any(c.test_envs in test_sets for c in pool)}
                     | {m for (m, t) in unfinished_here if t in test_sets})
    split = ""
    if pooled:  # the split every column reports (the linear unit tests' shuffled "test" split)
        splits = {c.report_split(e) for k, pool in candidates.items() if mine(k) for c in pool
                  if c.test_envs == () for e in env_order if any(c.has(e, s) for s in SPLITS)}
        split = splits.pop() if len(splits) == 1 else ""
    # the training environments' mean score: one column beside several test columns would
    # bury the table, and where every environment reports its "train" split it is the average
    show_train = len(env_columns) == 1 or (pooled and split != TRAIN)
    rows: dict[str, tuple[int, dict[str, Cell]]] = {}
    extra_names: set[str] = set()
    for method in methods:
        trials = sorted({k[3] for k, pool in candidates.items()
                         if k[:3] == (dataset, source, method) and any(c.test_envs in test_sets for c in pool)})
        cells: dict[str, Cell] = {}
        by_trial: dict[int, dict[str, float]] = {t: {} for t in trials}
        extras_by_col: dict[tuple[str, str], list[float]] = {}
        for test_envs, env, label in env_columns:
            pools = {trial: candidates[(dataset, source, method, trial)] for trial in trials
                     if any(c.test_envs == test_envs for c in candidates[(dataset, source, method, trial)])}
            choices = strategy.select_cell(pools, test_envs, env)
            values, reasons = [], []
            for trial in sorted(choices):
                choice = choices[trial]
                if isinstance(choice, Missing):
                    reasons.append(choice.reason)
                    continue
                values.append(choice.value)
                by_trial[trial][label] = choice.value
                row = {"dataset": dataset, "source": source, "method": method, "trial": trial, "run": choice.run,
                       "step": choice.step, "test_envs": column_envs[label]}
                per_trial_rows.append({**row, "column": label, "metric": metric, "value": choice.value})
                if pooled and label != env_columns[0][2]:
                    continue  # one run per trial: its extras once, not once per environment
                for name, value in choice.extras.items():
                    if name == TRAIN_ENVS and not show_train:
                        continue
                    extras_by_col.setdefault((name, label), []).append(value)
                    column = name if pooled else f"{name} ({label})"
                    per_trial_rows.append({**row, "column": column, "metric": name, "value": value})
            cells[label] = _cell(values, reasons, metric, unfinished_here.get((method, test_envs), {}))
        if len(env_columns) >= 2:
            labels = [label for _, _, label in env_columns]
            complete = [t for t in trials if all(label in by_trial[t] for label in labels)]
            worst = worst_of(metric)
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
            key = name if pooled or len(env_columns) == 1 else f"{name} ({label})"
            extra_names.add(key)
            column_envs[key] = column_envs[label]
            m, se = mean_se(values)
            cells[key] = Cell(m, se, len(values), "", metric if name == TRAIN_ENVS else name)
        n_trials = len({t for t in trials if by_trial[t]})
        rows[method] = (n_trials, cells)
    columns = [label for _, _, label in env_columns]
    if len(env_columns) >= 2:
        columns += [AVG, WORST]
    columns += sorted(extra_names, key=lambda name: (not name.startswith(TRAIN_ENVS), name))
    return Table(dataset, source, metric, columns, rows, test_envs=table_envs,
                 column_test_envs={c: e for c, e in column_envs.items() if c in columns and e != table_envs},
                 reported_split=split)


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
