"""Published numbers (results/published/NAME.csv) side by side with ours.

Each published row names its paper, table, protocol, dataset (with the options that make its
variant), row (an invbench method), column (a leaderboard column: an environment, avg,
"train envs", or an extra metric such as causal_error), the value, the spread the paper
reports with it (a standard deviation over seeds or restarts, or a standard error) and over
how many runs. Ours is the mean over trials of the same cell of our leaderboard, with its
standard error. The difference is given in units of the published spread: within 1 means
"inside the reported spread".
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = ("table", "row", "column", "published", "published_spread", "ours", "ours_se", "n")


@dataclass(frozen=True)
class Published:
    paper: str
    table: str
    protocol: str
    dataset: str
    dataset_options: dict
    row: str
    column: str
    unit: str  # "accuracy %", "error" (a fraction), "mse", "coefficient error"
    value: float
    spread: float | None
    spread_kind: str
    n: int | None
    note: str


def read_published(path: Path) -> list[Published]:
    out = []
    with open(path, newline="") as f:
        for line in csv.DictReader(f):
            out.append(Published(
                paper=line["paper"], table=line["table"], protocol=line["protocol"], dataset=line["dataset"],
                dataset_options=json.loads(line["dataset_options"] or "{}"), row=line["row"], column=line["column"],
                unit=line["unit"], value=float(line["published"]), spread=float(line["spread"]) if line["spread"] else None,
                spread_kind=line["spread_kind"], n=int(line["n"]) if line["n"] else None, note=line["note"]))
    return out


@dataclass(frozen=True)
class Comparison:
    published: Published
    ours: float | None  # in the published unit
    ours_se: float | None
    n: int  # our trials
    why_missing: str = ""

    @property
    def difference(self) -> float | None:
        return None if self.ours is None else self.ours - self.published.value

    @property
    def in_spreads(self) -> float | None:
        """|ours - published| in units of the published spread (None without a spread)."""
        d = self.difference
        s = self.published.spread
        if d is None or s is None:
            return None
        if s == 0:
            return 0.0 if abs(d) < 0.005 else math.inf  # a spread printed as 0.00
        return abs(d) / s


def dataset_labels(results: Any, dataset: str, options: dict) -> list[str]:
    """Our dataset labels (leaderboard groups) whose runs are ``dataset`` with ``options``."""
    runs = results.runs
    labels = set()
    for label, text in zip(runs["dataset"], runs["options"]):
        if label.split("[")[0] != dataset:
            continue
        ours = json.loads(text)
        if all(ours.get(k) == v for k, v in options.items()):
            labels.add(label)
    return sorted(labels)


def in_unit(values: list[float], metric: str, unit: str) -> list[float]:
    """Our per-trial values (metric "acc" as a fraction, "mse", extras) in the published unit."""
    if metric == "acc" and unit == "accuracy %":
        return [100.0 * v for v in values]
    if metric == "acc" and unit == "error":
        return [1.0 - v for v in values]
    if metric == "acc" or unit in ("accuracy %", "error"):
        raise ValueError(f"cannot compare our {metric} with a published {unit}")
    return values


def compare(published: list[Published], board: Any, results: Any, dataset_map: dict[str, str]) -> list[Comparison]:
    """Each published number with our cell. ``dataset_map`` maps a published dataset to ours
    (Colored MNIST's numbers are held against Colored Fashion-MNIST where MNIST is missing)."""
    from invbench.results.aggregate import AVG, WORST, mean_se
    from invbench.results.selection import TRAIN_ENVS

    frame = board.per_trial
    out = []
    for item in published:
        ours_dataset = dataset_map.get(item.dataset, item.dataset)
        labels = dataset_labels(results, ours_dataset, item.dataset_options)
        if not labels:
            out.append(Comparison(item, None, None, 0, "no runs of this dataset"))
            continue
        # an extra column of a table with several environment columns reads "NAME (ENV)"
        column = frame["column"]
        named = (column == item.column) | column.str.startswith(item.column + " (")
        cell = frame[frame["dataset"].isin(labels) & (frame["method"] == item.row) & named]
        if cell.empty and item.column in (AVG, WORST):
            metric, raw = _combined_per_trial(board, labels, item.row, item.column)
        elif cell.empty:
            raw = []
        else:
            metric, raw = str(cell["metric"].iloc[0]), [float(v) for v in cell["value"]]
        if not raw:
            out.append(Comparison(item, None, None, 0, "no value in our leaderboard"))
            continue
        if metric == TRAIN_ENVS:  # the training environments' mean of the table's own score
            metric = str(results.runs.loc[results.runs["dataset"].isin(labels), "score"].iloc[0])
        values = in_unit(raw, metric, item.unit)
        mean, se = mean_se(values)
        out.append(Comparison(item, mean, se, len(values)))
    return out


def _combined_per_trial(board: Any, labels: list[str], method: str, column: str) -> tuple[str, list[float]]:
    """(metric, per-trial values) of a table's average or worst over its environment columns:
    each trial that has every environment, as the leaderboard's own avg and worst cells."""
    from invbench.results.aggregate import AVG, worst_of

    for table in board.tables:
        if table.dataset not in labels or AVG not in table.columns:
            continue
        envs = table.columns[:table.columns.index(AVG)]
        rows = table.per_trial_of(board.per_trial)
        rows = rows[(rows["method"] == method) & rows["column"].isin(envs)]
        by_trial = rows.pivot_table(index="trial", columns="column", values="value", aggfunc="first")
        by_trial = by_trial.reindex(columns=envs).dropna()
        if by_trial.empty:
            continue
        combine = (lambda xs: sum(xs) / len(xs)) if column == AVG else worst_of(table.metric)
        return table.metric, [float(combine(list(row))) for row in by_trial.itertuples(index=False)]
    return "", []


def rows_for_csv(comparisons: list[Comparison]) -> list[dict]:
    rows = []
    for c in comparisons:
        p = c.published
        rows.append({"table": p.table, "row": p.row, "column": p.column if not p.dataset_options
                     else f"{p.column} [{p.dataset} {_options_text(p.dataset_options)}]",
                     "published": p.value, "published_spread": "" if p.spread is None else p.spread,
                     "ours": "" if c.ours is None else round(c.ours, 6),
                     "ours_se": "" if c.ours_se is None else round(c.ours_se, 6), "n": c.n})
    return rows


def _options_text(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(options.items()))


def write_csv(comparisons: list[Comparison], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows_for_csv(comparisons))


def to_markdown(comparisons: list[Comparison]) -> str:
    lines = ["| table | dataset | row | column | unit | published | ours (± s.e.) | n | difference / spread |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for c in comparisons:
        p = c.published
        dataset = p.dataset + (f" ({_options_text(p.dataset_options)})" if p.dataset_options else "")
        spread = "" if p.spread is None else f" ± {p.spread:g}"
        if c.ours is None:
            ours, ratio = f"— ({c.why_missing})", ""
        else:
            se = "" if c.ours_se is None else f" ± {c.ours_se:.3g}"
            ours = f"{c.ours:.4g}{se}"
            r = c.in_spreads
            ratio = "no spread" if r is None else ("∞" if math.isinf(r) else f"{r:.2f}")
        lines.append(f"| {p.table} | {dataset} | {p.row} | {p.column} | {p.unit} | {p.value:g}{spread} | {ours} | "
                     f"{c.n} | {ratio} |")
    return "\n".join(lines) + "\n"
