"""Compare current results with a baseline: per cell the change, its SE and Welch's t-test.

A cell is (dataset, source, test_envs, method, column, metric): a test environment's
selected score or an extra metric, one value per trial. ``test_envs`` is the test set the
value's runs held out ("sigma=5", "a+b", "none" when every environment trained): the runs
of two test-set choices answer different questions and are never compared. For each cell
present on both sides:
  change = mean(current) - mean(baseline),
  SE     = sqrt(s_b^2 / n_b + s_c^2 / n_c) (Welch's standard error of the difference),
  p      = Welch's two-sided t-test over trials (scipy.stats.ttest_ind, equal_var=False;
           Welch 1947, "The generalization of Student's problem ...").
What a metric means (its display units, which way is better, its default threshold) comes
from invbench.metrics. Verdicts:
  unchanged   the means are equal within floating-point tolerance, or p >= ``alpha``;
  untested    a side has fewer than two trials: no p-value, so no claim either way;
  better, worse  significant (p < ``alpha``), in the metric's direction;
  regression  significantly worse by more than the metric's threshold (accuracy in
              percentage points, the error metrics in percent of the baseline's mean);
  changed     significant, for a metric without a declared direction.
Identical constant values give p = 1, a constant shift with zero variance p = 0.

Baseline file format (stable; written by ``invbench collect DIR --save-baseline FILE``):
CSV with the header BASELINE_COLUMNS, one line per (cell, trial); ``value`` is the raw
value (accuracy as a fraction). Only lines whose ``selection`` matches are compared. A
baseline written before ``test_envs`` was a column holds only runs with a test environment;
its test sets are read from the column labels ("sigma=5", "b [test b+c]", "causal_error (sigma=5)").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from invbench.metrics import Metric, metric
from invbench.results.selection import TRAIN_ENVS

BASELINE_COLUMNS = ["dataset", "source", "selection", "method", "column", "metric", "trial", "value", "run", "step",
                    "test_envs"]
KEY = ["dataset", "source", "test_envs", "method", "column", "metric"]


VERDICTS = ("regression", "worse", "better", "changed", "unchanged", "untested")
# Means this close are equal: the runs compute in float32 (about 7 significant digits), so a
# relative difference below a millionth is rounding, not a change.
REL_TOL, ABS_TOL = 1e-6, 1e-12


def same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def per_trial_values(source: Path | str, selection: str, include_unfinished: bool = False):
    """A folder of run directories (collected now) or a baseline CSV -> per-trial DataFrame."""
    import pandas as pd

    from invbench.errors import ConfigError

    path = Path(source)
    if path.is_dir():
        from invbench.results.aggregate import collect

        frame = collect(path, selection, include_unfinished).per_trial.copy()
        frame.insert(2, "selection", selection)
        return frame[BASELINE_COLUMNS]
    if not path.is_file():
        raise ConfigError(f"{path} is neither a folder of run directories nor a baseline CSV file")
    try:
        frame = pd.read_csv(path, dtype={"dataset": str, "source": str, "method": str, "column": str, "metric": str,
                                         "test_envs": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"{path} is not a readable baseline CSV: {exc}") from None
    if "test_envs" not in frame.columns and {"column", "metric"} <= set(frame.columns):
        frame = with_test_envs(frame)
    missing = [c for c in BASELINE_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} lacks baseline columns {missing}; expected {', '.join(BASELINE_COLUMNS)} "
                          f"(write one with `invbench collect DIR --save-baseline FILE`)")
    chosen = frame[frame["selection"] == selection]
    if chosen.empty and len(frame):
        raise ConfigError(f"{path} has no values for selection {selection!r}; it has "
                          f"{', '.join(sorted(set(frame['selection'])))} (use --selection)")
    return chosen[BASELINE_COLUMNS]


def test_envs_of_label(column: str, metric: str) -> str:
    """The test set of a per-trial column label written before baselines had ``test_envs``:
    "sigma=5" -> "sigma=5", "b [test b+c]" -> "b+c", "causal_error (b [test b+c])" -> "b+c"."""
    label = column
    if column.startswith(f"{metric} (") and column.endswith(")"):  # an extra metric: "name (label)"
        label = column[len(metric) + 2:-1]
    held = re.fullmatch(r".* \[test (.+)\]", label)
    return held.group(1) if held else label


def with_test_envs(frame):
    """``frame`` with its test_envs column; a frame made before they were recorded gets them
    from its column labels."""
    if "test_envs" in frame.columns:
        return frame
    return frame.assign(test_envs=[test_envs_of_label(c, m) for c, m in zip(frame["column"], frame["metric"])])


def baseline_selections(path: Path | str) -> list[str]:
    """The selections a baseline CSV holds values for ([] when it cannot be read)."""
    import csv

    try:
        with open(path, newline="") as handle:
            return sorted({row.get("selection") or "" for row in csv.DictReader(handle)} - {""})
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def save_baseline(frame, path: Path | str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame[BASELINE_COLUMNS].to_csv(path, index=False, lineterminator="\n", float_format="%.17g")


@dataclass(frozen=True)
class CellComparison:
    key: tuple
    n_base: int
    n_cur: int
    base_mean: float
    cur_mean: float
    change: float  # current - baseline, display units
    se: float  # display units (nan when a side has < 2 trials)
    p: float  # nan when it cannot be computed
    verdict: str  # one of VERDICTS


def welch(base: list[float], cur: list[float]) -> tuple[float, float]:
    """(standard error of the difference, two-sided p-value) of Welch's t-test."""
    from scipy import stats

    if len(base) < 2 or len(cur) < 2:
        return math.nan, math.nan
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)
    se = math.sqrt(var(base) / len(base) + var(cur) / len(cur))
    if se == 0.0:
        return 0.0, (1.0 if same(sum(cur) / len(cur), sum(base) / len(base)) else 0.0)
    return se, float(stats.ttest_ind(cur, base, equal_var=False).pvalue)


def thresholds_for(metrics, threshold=None) -> dict[str, float]:
    """Each metric's regression threshold: its default, replaced by ``threshold`` (one number
    for every metric, in each metric's own threshold unit) or by a {metric: value} mapping
    (the key None: every metric not named)."""
    out = {name: metric(name).threshold for name in metrics}
    if isinstance(threshold, dict):
        every = threshold.get(None)
        out = {name: float(threshold.get(name, out[name] if every is None else every)) for name in out}
    elif threshold is not None:
        out = {name: float(threshold) for name in out}
    return out


def verdict(meaning: Metric, base: list[float], cur: list[float], p: float, threshold: float, alpha: float) -> str:
    """The verdict of one cell; ``base`` and ``cur`` in display units."""
    base_mean, cur_mean = sum(base) / len(base), sum(cur) / len(cur)
    if same(base_mean, cur_mean):
        return "unchanged"
    if p != p:
        return "untested"
    if p >= alpha:
        return "unchanged"
    worse_by = meaning.worse_by(cur_mean - base_mean)
    if worse_by is None:
        return "changed"
    if worse_by < 0:
        return "better"
    limit = threshold * abs(base_mean) / 100 if meaning.relative else threshold
    return "regression" if worse_by > limit else "worse"


def compare_frames(base, cur, threshold=None, alpha: float = 0.05):
    """Compare two per-trial frames; returns (comparisons, only_in_baseline, only_in_current).

    ``threshold``: None (each metric's default), a number for every metric, or a mapping
    {metric: value}; see ``thresholds_for``. The training environments' score is left
    out: it describes a run, and an invariance method may rightly give some of it up;
    regression tracking guards the test numbers.
    """
    base, cur = base[base["metric"] != TRAIN_ENVS], cur[cur["metric"] != TRAIN_ENVS]
    base, cur = with_test_envs(base), with_test_envs(cur)
    b = {k: list(g["value"]) for k, g in base.groupby(KEY, sort=True)}
    c = {k: list(g["value"]) for k, g in cur.groupby(KEY, sort=True)}
    limits = thresholds_for({key[-1] for key in b}, threshold)
    out = []
    for key in sorted(set(b) & set(c)):
        meaning = metric(key[-1])
        bs, cs = [meaning.display(v) for v in b[key]], [meaning.display(v) for v in c[key]]
        se, p = welch(bs, cs)
        change = sum(cs) / len(cs) - sum(bs) / len(bs)
        out.append(CellComparison(key, len(bs), len(cs), sum(bs) / len(bs), sum(cs) / len(cs), change, se, p,
                                  verdict(meaning, bs, cs, p, limits[key[-1]], alpha)))
    return out, sorted(set(b) - set(c)), sorted(set(c) - set(b))


def moved_values(base, cur, tolerance: float) -> list[str]:
    """Regression tracking of deterministic runs: every per-trial value that moved by more
    than ``tolerance`` (relative to the baseline's magnitude, at least ``tolerance`` in
    absolute terms), and every cell or trial present on one side only, as lines for people."""
    b = {tuple(k) + (int(t),): float(v) for *k, t, v in base[KEY + ["trial", "value"]].itertuples(index=False)}
    c = {tuple(k) + (int(t),): float(v) for *k, t, v in cur[KEY + ["trial", "value"]].itertuples(index=False)}
    name = lambda key: " / ".join(str(part) for part in key[:-1]) + f" / trial {key[-1]}"
    lines = [f"{name(k)}: only in the baseline ({b[k]:.6g})" for k in sorted(set(b) - set(c))]
    lines += [f"{name(k)}: only in the current runs ({c[k]:.6g})" for k in sorted(set(c) - set(b))]
    for k in sorted(set(b) & set(c)):
        if abs(c[k] - b[k]) > tolerance * max(1.0, abs(b[k])):
            lines.append(f"{name(k)}: {b[k]:.6g} -> {c[k]:.6g}")
    return lines


def rule_text(metrics, threshold, alpha: float) -> str:
    """The regression rule for the metrics compared, in their own units, as one line."""
    limits = thresholds_for(sorted(set(metrics)), threshold)
    # metrics that share a threshold in the same units are named together, once
    shared: dict[tuple, list[str]] = {}
    for name, value in limits.items():
        meaning = metric(name)
        if meaning.higher_is_better is not None:
            shared.setdefault((meaning.relative, meaning.unit, value), []).append(name)
    parts = [metric(names[0]).threshold_text(value, _or([metric(n).title for n in names]))
             for (_, _, value), names in shared.items()]
    undirected = [name for name in limits if metric(name).higher_is_better is None]
    text = (f"Regression: worse than the baseline by more than {' or '.join(parts)}, with Welch p < {alpha:g}"
            if parts else "Regression: none possible (no compared metric has a direction)")
    if undirected:
        text += f"; {', '.join(undirected)}: no direction known, a significant change reads 'changed'"
    return text + f". Equal means, or p >= {alpha:g}, read 'unchanged'."


def _or(titles: list[str]) -> str:
    return titles[0] if len(titles) == 1 else f"{', '.join(titles[:-1])} or {titles[-1]}"


def _num(x: float, spec: str = ".3g") -> str:
    return "n/a" if x != x else format(x, spec)


def comparison_markdown(comparisons, only_base, only_cur, threshold, alpha: float) -> str:
    """``threshold`` as for ``compare_frames``; baseline, current, change and SE in display
    units (accuracy in percent)."""
    lines = [rule_text([c.key[-1] for c in comparisons], threshold, alpha), "",
             "| dataset | source | test envs | method | column | metric | n base/cur | baseline | current | change | SE | p | verdict |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in comparisons:
        esc = lambda s: str(s).replace("|", "\\|")
        lines.append("| " + " | ".join(map(esc, [*c.key, f"{c.n_base}/{c.n_cur}", _num(c.base_mean, ".4g"),
                                                 _num(c.cur_mean, ".4g"), _num(c.change, "+.3g"), _num(c.se),
                                                 _num(c.p), c.verdict.upper() if c.verdict == "regression" else c.verdict])) + " |")
    for what, keys in (("only in the baseline (not compared)", only_base), ("only in the current results (new)", only_cur)):
        if keys:
            lines += ["", f"{len(keys)} cell(s) {what}:"] + [f"- {', '.join(map(str, k))}" for k in keys]
    n_reg = sum(c.verdict == "regression" for c in comparisons)
    lines += ["", f"{n_reg} regression(s) in {len(comparisons)} compared cell(s)."]
    return "\n".join(lines) + "\n"
