"""Figures of a leaderboard, drawn with matplotlib's Agg backend (no display needed).

- ``env_bars``: the test score of each method in each test environment, bars at the mean
  over trials with error bars of one standard error over trials (the table's cells);
- ``heatmap``: the same means as a method-by-environment grid;
- ``curves``: training curves of the runs the selection picked, one row per test
  environment: the score of the test environment and of the training environments, and
  the penalty, against the step (mean over trials, band of one standard error).

Every method has one colour and marker in every figure (invbench.results.display), and its
display name. An axis of a loss or error (and the penalty) is logarithmic when its positive
values span more than two decades (``log_scale``); accuracy axes stay linear. A panel
without data is not drawn, and a figure without data is not written: ``write_plots``
returns what it wrote (PNG, PDF and SVG of each figure, with a caption saying what the
figure shows) and why each figure it did not write is missing.

Each table is drawn from its own rows of the per-trial frame (``Table.per_trial_of``): the
table of runs that trained on every environment (the linear unit tests, the IRM paper's
pooled ERM) has one column per environment, says so in its titles, labels and captions,
and its file names hold "-trained_on_every_env" (``Table.name``), so that the two tables
of one dataset never overwrite each other's figures.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invbench.metrics import metric
from invbench.results.aggregate import mean_se
from invbench.results.display import display_name, method_colour, method_marker, ordered
from invbench.results.render import shared_decimals
from invbench.splits import TRAIN

FORMATS = ("png", "pdf", "svg")
DECADES_RATIO = 100.0  # max / min of the positive values above which an axis is logarithmic
SE_TEXT = "±1 standard error over trials"
PNG_DPI = 150
MARKERS_PER_LINE = 6
KINDS = {"envs": "per-environment bars", "heatmap": "heatmap", "curves": "training curves"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _style():
    """Settings for figures meant for papers: TrueType fonts in PDF (some venues reject
    Type 3), and SVG element ids that do not change from one run to the next."""
    plt = _pyplot()
    with plt.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "invbench",
                         "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
                         "axes.spines.top": False, "axes.spines.right": False}):
        yield plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def log_scale(values) -> bool:
    """Whether an axis of these values (a loss, an error, a penalty) reads better in log
    scale: no negative values, and the positive ones span more than DECADES_RATIO."""
    finite = [float(v) for v in values if math.isfinite(float(v))]
    positive = [v for v in finite if v > 0]
    if any(v < 0 for v in finite) or len(positive) < 2:
        return False
    return max(positive) / min(positive) > DECADES_RATIO


def _log_axis(metric_name: str, values) -> bool:
    """Accuracy stays linear whatever its range; a metric where lower is better may go log."""
    return metric(metric_name).higher_is_better is False and log_scale(values)


def table_stem(board, table) -> str:
    """The start of a table's figure file names (a table whose runs trained on every
    environment has its own: a sweep may hold both choices of one dataset)."""
    return _slug(f"{table.name}-{board.selection}")


def _scores(board, table):
    """The table's per-trial scores (no extra metrics), in display units: its own test-set
    choice only, never the other table of the same dataset and source."""
    frame = table.per_trial_of(board.per_trial)
    sub = frame[frame["metric"] == table.metric].copy()
    sub["value"] = sub["value"] * metric(table.metric).scale
    return sub


def _env_columns(table, data) -> list[str]:
    present = set(data["column"])
    return [c for c in table.columns if c in present]


def _trials_text(data) -> str:
    """How many trials each bar, cell or line is over."""
    counts = data.groupby(["method", "column"])["trial"].nunique()
    low, high = int(counts.min()), int(counts.max())
    if low == high:
        return f"n = {low} trial{'s' if low != 1 else ''} each"
    return f"n = {low} to {high} trials each (the table gives each cell's n)"


def _where(board, table) -> str:
    choice = f", {table.choice}" if table.choice else ""
    return f"{table.dataset} (source {table.source}{choice}), {board.selection_title} selection"


def _env_word(table) -> str:
    """What a column is: a held-out test environment, or (every environment trained) one of them."""
    return "environment" if table.trained_on_every_env else "test environment"


def _score_words(table, words: str) -> str:
    """``words`` (a metric's label or heading) as the table's cells report it: the test
    score, or (every environment trained) each environment's reported split."""
    if not table.trained_on_every_env:
        return f"test {words}"
    return f"{words} on the {table.reported_split} split" if table.reported_split else words


def _dataset_title(table) -> str:
    """The dataset, for a figure's title; a table whose runs trained on every environment says so."""
    return f"{table.dataset} ({table.choice})" if table.trained_on_every_env else table.dataset


def _method_handles(methods, lines: bool):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if lines:
        return [Line2D([], [], color=method_colour(m), marker=method_marker(m), markersize=4, label=display_name(m))
                for m in methods]
    return [Patch(facecolor=method_colour(m), label=display_name(m)) for m in methods]


# Per-environment bars ------------------------------------------------------------------------

def env_bars(board, table):
    """Bar per (test environment, method): the mean over trials, error bar = standard error
    over trials (the numbers of the table's cells). None when nothing was selected."""
    data = _scores(board, table)
    if data.empty:
        return None
    from matplotlib import patheffects

    plt = _pyplot()
    meaning = metric(table.metric)
    envs = _env_columns(table, data)
    methods = ordered(data["method"])
    log = _log_axis(table.metric, data["value"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(3.5, 0.22 * len(envs) * len(methods) + 1.2 * len(envs) + 1.0), 3.2))
    if log:
        ax.set_yscale("log")
    for j, method in enumerate(methods):
        xs, means, ses = [], [], []
        for i, env in enumerate(envs):
            values = data[(data["method"] == method) & (data["column"] == env)]["value"].tolist()
            if not values:
                continue
            mean, se = mean_se(values)
            xs.append(i - 0.4 + width * (j + 0.5))
            means.append(mean)
            ses.append(se or 0.0)
        ax.bar(xs, means, width=width * 0.92, color=method_colour(method), edgecolor="white", linewidth=0.4)
        bars = ax.errorbar(xs, means, yerr=ses, fmt="none", ecolor="#333333", elinewidth=0.9, capsize=2)
        for artist in bars.lines[1] + bars.lines[2]:  # a white halo: visible on dark bars too
            artist.set_path_effects([patheffects.withStroke(linewidth=2.4, foreground="white")])
    ax.set_xticks(range(len(envs)))
    long_names = max(map(len, envs)) > 10  # "e=0.1 [test e=0.1+e=0.2]": slanted, so they do not overlap
    ax.set_xticklabels(envs, rotation=20 if long_names else 0, ha="right" if long_names else "center")
    ax.set_xlim(-0.5, len(envs) - 0.5)
    ax.set_xlabel(_env_word(table))
    ax.set_ylabel(_score_words(table, meaning.label) + (" (log scale)" if log else ""))
    ax.set_title(f"{_dataset_title(table)}: {board.selection_title}")
    ax.legend(handles=_method_handles(methods, lines=False), title=f"error bars:\n{SE_TEXT}",
              loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, title_fontsize=7)
    fig.tight_layout()
    return fig


def env_bars_caption(board, table) -> str:
    data = _scores(board, table)
    meaning = metric(table.metric)
    log = _log_axis(table.metric, data["value"])
    return (f"{_where(board, table)}: {_score_words(table, meaning.heading)} of each method in each "
            f"{_env_word(table)}"
            f"{' (log scale)' if log else ''}. Bars: mean over trials; error bars: {SE_TEXT}; "
            f"{_trials_text(data)}.")


# Heatmap -------------------------------------------------------------------------------------

def heatmap(board, table):
    """Mean score per method (rows) and test environment (columns; each environment when the
    table's runs trained on all of them). None when nothing was selected."""
    data = _scores(board, table)
    if data.empty:
        return None
    import seaborn as sns
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    meaning = metric(table.metric)
    envs = _env_columns(table, data)
    methods = ordered(data["method"])
    grid = data.pivot_table(index="method", columns="column", values="value", aggfunc="mean")
    grid = grid.reindex(index=methods, columns=envs)
    grid.index = [display_name(m) for m in grid.index]
    log = _log_axis(table.metric, data["value"])
    values = [float(v) for v in grid.to_numpy().ravel() if math.isfinite(v)]  # a method without this env: NaN
    norm = LogNorm(vmin=min(v for v in values if v > 0), vmax=max(values)) if log else None
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(envs) + 2.8), 0.32 * len(methods) + 1.4))
    # the colour map runs from bad (dark) to good (bright) whichever way is better
    decimals = shared_decimals(table.metric, values)
    sns.heatmap(grid, annot=True, fmt=f".{decimals}f", norm=norm, annot_kws={"fontsize": 7},
                cmap="viridis" if meaning.higher_is_better is not False else "viridis_r",
                cbar_kws={"label": f"mean {_score_words(table, meaning.label)}" + (" (log scale)" if log else "")},
                ax=ax)
    ax.set_xlabel(_env_word(table))
    ax.set_ylabel("")
    ax.set_title(f"{_dataset_title(table)}: {board.selection_title}")
    fig.tight_layout()
    return fig


def heatmap_caption(board, table) -> str:
    data = _scores(board, table)
    meaning = metric(table.metric)
    log = _log_axis(table.metric, data["value"])
    return (f"{_where(board, table)}: mean over trials of the {_score_words(table, meaning.heading)} of each "
            f"method (rows) in each {_env_word(table)} (columns); colour{' on a log scale' if log else ''}, "
            f"{'brighter' if meaning.higher_is_better is not None else 'higher'} is "
            f"{'better' if meaning.higher_is_better is not None else 'larger'}; {_trials_text(data)}. "
            f"The standard errors are in the table.")


# Training curves -----------------------------------------------------------------------------

@dataclass
class _CurveData:
    columns: list[str]  # test environments with curves, in the table's order
    score: Any  # column, method, run, trial, step, role ("test" or "train"), value (display units)
    penalty: Any  # column, method, run, trial, step, value


def _column_env(column: str) -> str:
    """The environment a column reports ("a" of "a [test a+b]")."""
    return column.split(" [test ", 1)[0]


def _curve_data(board, table, records) -> _CurveData:
    import pandas as pd

    chosen = _scores(board, table)[["column", "method", "trial", "run"]].drop_duplicates()
    scores, penalties = [], []
    for column in _env_columns(table, chosen):
        picked = chosen[chosen["column"] == column]
        sub = records[records["run"].isin(set(picked["run"]))]
        evals = sub[(sub["kind"] == "eval") & (sub["metric"] == table.metric) & (sub["split"] == TRAIN)]
        env = _column_env(column)
        test = evals[evals["env"] == env].assign(role="test")
        training = evals[[e not in tests for e, tests in zip(evals["env"], evals["test_envs"])]].assign(role="train")
        for part in (test, training):
            if len(part):
                part = part.groupby(["method", "run", "trial", "step", "role"], as_index=False)["value"].mean()
                scores.append(part.assign(column=column))
        penalty = sub[(sub["kind"] == "train") & (sub["metric"] == "penalty")]
        if len(penalty):
            penalties.append(penalty[["method", "run", "trial", "step", "value"]].assign(column=column))
    score = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame(
        columns=["method", "run", "trial", "step", "role", "value", "column"])
    score["value"] = score["value"] * metric(table.metric).scale
    penalty = pd.concat(penalties, ignore_index=True) if penalties else pd.DataFrame(
        columns=["method", "run", "trial", "step", "value", "column"])
    columns = [c for c in _env_columns(table, chosen) if c in set(score["column"])]
    return _CurveData(columns, score, penalty)


def _mean_band(frame):
    """Per (method, step): mean and standard error over the runs (one per trial)."""
    rows = []
    for (method, step), group in frame.groupby(["method", "step"]):
        mean, se = mean_se(group["value"].tolist())
        rows.append((method, step, mean, se or 0.0))
    return rows


def _draw_lines(ax, frame, methods, linestyle: str):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))  # steps: round numbers
    band_alpha = 0.15 if len(methods) <= 4 else 0.06  # many overlapping bands turn to mud
    for method in methods:
        rows = _mean_band(frame[frame["method"] == method])
        if not rows:
            continue
        steps = [r[1] for r in rows]
        means = [r[2] for r in rows]
        ses = [r[3] for r in rows]
        colour = method_colour(method)
        ax.plot(steps, means, color=colour, linestyle=linestyle, linewidth=1.2, marker=method_marker(method),
                markersize=3.5, markevery=max(1, len(steps) // MARKERS_PER_LINE))
        ax.fill_between(steps, [m - s for m, s in zip(means, ses)], [m + s for m, s in zip(means, ses)],
                        color=colour, alpha=band_alpha, linewidth=0)


def curves(board, table, records, data: _CurveData | None = None):
    """Score and penalty against step for the runs the selection picked: a row of panels per
    test environment. None when those runs have no evaluation records. ``data``: the
    table's curves when already read from ``records``."""
    from matplotlib.lines import Line2D

    data = data or _curve_data(board, table, records)
    if not data.columns:
        return None
    plt = _pyplot()
    meaning = metric(table.metric)
    methods = ordered(set(data.score["method"]) | set(data.penalty["method"]))
    has_penalty = len(data.penalty) > 0
    score_log = _log_axis(table.metric, data.score["value"])
    penalty_log = log_scale(data.penalty["value"]) if has_penalty else False
    n_rows, n_cols = len(data.columns), 2 if has_penalty else 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols + 1.6, 2.6 * n_rows + 0.4), squeeze=False)
    for row, column in enumerate(data.columns):
        ax = axes[row][0]
        score = data.score[data.score["column"] == column]
        if score_log:
            ax.set_yscale("log")
        _draw_lines(ax, score[score["role"] == "test"], methods, "-")
        _draw_lines(ax, score[score["role"] == "train"], methods, "--")
        ax.set_ylabel(meaning.label + (" (log scale)" if score_log else ""))
        ax.set_title(f"{_env_word(table)} {column}: {meaning.title}")
        if has_penalty:
            penalty = data.penalty[data.penalty["column"] == column]
            if penalty.empty:
                axes[row][1].remove()  # no empty panels
            else:
                ax = axes[row][1]
                if penalty_log:
                    ax.set_yscale("log")
                _draw_lines(ax, penalty, methods, "-")
                ax.set_ylabel("penalty (unweighted)" + (" (log scale)" if penalty_log else ""))
                ax.set_title(f"{_env_word(table)} {column}: penalty")
    for ax in fig.axes:
        ax.set_xlabel("step")
    handles = _method_handles(methods, lines=True) + [
        Line2D([], [], color="#444444", linestyle="-",
               label="the row's environment" if table.trained_on_every_env else "test environment"),
        Line2D([], [], color="#444444", linestyle="--",
               label="mean over every environment" if table.trained_on_every_env else "training environments"),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               title=f"bands:\n{SE_TEXT}", title_fontsize=7)
    fig.suptitle(f"{_dataset_title(table)}: training curves of the selected runs ({board.selection_title})")
    fig.tight_layout()
    return fig


def curves_caption(board, table, records, data: _CurveData | None = None) -> str:
    data = data or _curve_data(board, table, records)
    meaning = metric(table.metric)
    score_log = _log_axis(table.metric, data.score["value"])
    lines = ("the row's environment (solid) and the mean over every environment (dashed)"
             if table.trained_on_every_env else
             "the test environment (solid) and the mean over the training environments (dashed)")
    text = (f"{_where(board, table)}: training curves of the runs the selection picked, one row per "
            f"{_env_word(table)}. {'Left' if len(data.penalty) else 'Each panel'}: the {meaning.title} on the "
            f"'train' split{' (log scale)' if score_log else ''} of {lines} against the step")
    if len(data.penalty):
        log = log_scale(data.penalty["value"])
        text += f"; right: the unweighted penalty{' (log scale)' if log else ''} of the methods that have one"
    return text + f". Lines: mean over trials; bands: {SE_TEXT}; {_trials_text(data.score)}."


# Writing -------------------------------------------------------------------------------------

@dataclass
class Figure:
    """One figure written in every format, and what it shows."""

    table: Any
    kind: str  # "envs", "heatmap" or "curves"
    caption: str
    files: list[Path]  # one per format, PNG first

    @property
    def png(self) -> Path:
        return self.files[0]


@dataclass
class Plots:
    """What ``write_plots`` wrote. Iterating gives the PNG paths (one per figure)."""

    figures: list[Figure] = field(default_factory=list)
    not_written: list[tuple[Any, str]] = field(default_factory=list)  # (table, why a figure is missing)

    def __iter__(self):
        return iter([f.png for f in self.figures])

    def __len__(self) -> int:
        return len(self.figures)

    def of(self, table) -> tuple[list[Figure], list[str]]:
        """A table's figures, and why any of its figures is missing."""
        return ([f for f in self.figures if f.table is table], [why for t, why in self.not_written if t is table])


def _save(fig, stem: Path) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        path = stem.with_name(f"{stem.name}.{fmt}")
        # no creation dates: a figure regenerated from the same runs is the same file
        metadata = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
        fig.savefig(path, dpi=PNG_DPI, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    return paths


def write_plots(board, records, out_dir: Path | str) -> Plots:
    """Write every figure of every table that has data, as PNG, PDF and SVG under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # only the rows any curve can use, once, rather than the whole frame once per table
    records = records[records["run"].isin(set(board.per_trial["run"]))
                      & (records["kind"].isin(["eval", "train"]))]
    plots = Plots()
    stems: dict[str, int] = {}
    with _style() as plt:
        for table in board.tables:
            if _scores(board, table).empty:
                plots.not_written.append((table, "no figures: no cell of this table has a value (its notes say why)"))
                continue
            stem = table_stem(board, table)
            stems[stem] = stems.get(stem, 0) + 1
            if stems[stem] > 1:  # two tables with one stem: neither overwrites the other's files
                stem += f"-{stems[stem]}"
            curve_data = _curve_data(board, table, records)  # read once: records can be millions of rows
            makers = {"envs": (lambda: env_bars(board, table), lambda: env_bars_caption(board, table)),
                      "heatmap": (lambda: heatmap(board, table), lambda: heatmap_caption(board, table)),
                      "curves": (lambda: curves(board, table, records, curve_data),
                                 lambda: curves_caption(board, table, records, curve_data))}
            for kind, (make, caption) in makers.items():
                fig = make()
                if fig is None:
                    plots.not_written.append((table, f"no {KINDS[kind]}: the selected runs have no records to draw"))
                    continue
                files = _save(fig, out / f"{stem}-{kind}")
                plt.close(fig)
                plots.figures.append(Figure(table, kind, caption(), files))
    return plots
