"""Compare current results with a baseline: per cell the change, its SE and Welch's t-test.

A cell is (dataset, source, method, column, metric): a test environment's selected score
or an extra metric, one value per trial. For each cell present on both sides:
  change = mean(current) - mean(baseline),
  SE     = sqrt(s_b^2 / n_b + s_c^2 / n_c) (Welch's standard error of the difference),
  p      = Welch's two-sided t-test over trials (scipy.stats.ttest_ind, equal_var=False;
           Welch 1947, "The generalization of Student's problem ...").
A cell regresses when it got worse (accuracy down; MSE and the extra error metrics up) by
more than ``threshold`` in display units (accuracy in percentage points, other metrics in
their own units) with p < ``alpha``. Fewer than two trials on a side gives no p-value, so
no regression can be claimed there; identical constant values give p = 1, a constant
shift with zero variance p = 0.

Baseline file format (stable; written by ``invbench collect DIR --save-baseline FILE``):
CSV with the header BASELINE_COLUMNS, one line per (cell, trial); ``value`` is the raw
value (accuracy as a fraction). Only lines whose ``selection`` matches are compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from invbench.results.selection import TRAIN_ENVS

BASELINE_COLUMNS = ["dataset", "source", "selection", "method", "column", "metric", "trial", "value", "run", "step"]
KEY = ["dataset", "source", "method", "column", "metric"]


def higher_is_better(metric: str) -> bool:
    return metric == "acc"


def display_scale(metric: str) -> float:
    return 100.0 if metric == "acc" else 1.0


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
        frame = pd.read_csv(path, dtype={"dataset": str, "source": str, "method": str, "column": str, "metric": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"{path} is not a readable baseline CSV: {exc}") from None
    missing = [c for c in BASELINE_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} lacks baseline columns {missing}; expected {', '.join(BASELINE_COLUMNS)} "
                          f"(write one with `invbench collect DIR --save-baseline FILE`)")
    chosen = frame[frame["selection"] == selection]
    if chosen.empty and len(frame):
        raise ConfigError(f"{path} has no values for selection {selection!r}; it has "
                          f"{', '.join(sorted(set(frame['selection'])))} (use --selection)")
    return chosen[BASELINE_COLUMNS]


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
    verdict: str  # "regression", "worse", "better", "same"


def welch(base: list[float], cur: list[float]) -> tuple[float, float]:
    """(standard error of the difference, two-sided p-value) of Welch's t-test."""
    from scipy import stats

    if len(base) < 2 or len(cur) < 2:
        return math.nan, math.nan
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)
    se = math.sqrt(var(base) / len(base) + var(cur) / len(cur))
    diff = sum(cur) / len(cur) - sum(base) / len(base)
    if se == 0.0:
        return 0.0, (1.0 if diff == 0 else 0.0)
    return se, float(stats.ttest_ind(cur, base, equal_var=False).pvalue)


def compare_frames(base, cur, threshold: float = 1.0, alpha: float = 0.05):
    """Compare two per-trial frames; returns (comparisons, only_in_baseline, only_in_current).

    The training environments' score is left out: it describes a run, and an invariance
    method may rightly give some of it up; regression tracking guards the test numbers.
    """
    base, cur = base[base["metric"] != TRAIN_ENVS], cur[cur["metric"] != TRAIN_ENVS]
    b = {k: list(g["value"]) for k, g in base.groupby(KEY, sort=True)}
    c = {k: list(g["value"]) for k, g in cur.groupby(KEY, sort=True)}
    out = []
    for key in sorted(set(b) & set(c)):
        scale = display_scale(key[-1])
        bs, cs = [v * scale for v in b[key]], [v * scale for v in c[key]]
        se, p = welch(bs, cs)
        change = sum(cs) / len(cs) - sum(bs) / len(bs)
        worse_by = -change if higher_is_better(key[-1]) else change
        if worse_by > threshold and p == p and p < alpha:
            verdict = "regression"
        elif worse_by > 0:
            verdict = "worse"
        elif worse_by < 0:
            verdict = "better"
        else:
            verdict = "same"
        out.append(CellComparison(key, len(bs), len(cs), sum(bs) / len(bs), sum(cs) / len(cs), change, se, p, verdict))
    return out, sorted(set(b) - set(c)), sorted(set(c) - set(b))


def _num(x: float, spec: str = ".3g") -> str:
    return "n/a" if x != x else format(x, spec)


def comparison_markdown(comparisons, only_base, only_cur, threshold: float, alpha: float) -> str:
    lines = [f"Regression: worse by more than {threshold:g} (accuracy in points) with Welch p < {alpha:g}.", "",
             "| dataset | source | method | column | metric | n base/cur | baseline | current | change | SE | p | verdict |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
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
