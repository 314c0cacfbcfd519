"""seaborn figures of a leaderboard (matplotlib's Agg backend: no display needed).

- per-environment score with standard-error bars, one colour per method;
- a method-by-environment heatmap of the mean score;
- training curves of the selected runs: the score of the training and test environments,
  and the penalty, against the step (mean and standard error over trials).
Each function returns the figure; ``write_plots`` saves PNGs and returns their paths.
"""

from __future__ import annotations

import re
from pathlib import Path

from invbench.metrics import metric
from invbench.splits import TRAIN


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _scores(board, table):
    frame = table.per_trial_of(board.per_trial)
    sub = frame[frame["metric"] == table.metric].copy()
    sub["value"] = sub["value"] * metric(table.metric).scale
    return sub


def env_bars(board, table):
    """Bar per (environment, method): mean over trials, error bar = standard error."""
    import seaborn as sns

    plt = _pyplot()
    data = _scores(board, table)
    envs = [c for c in table.columns if c in set(data["column"])]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(envs) + 2), 3.6))
    sns.barplot(data=data, x="column", y="value", hue="method", order=envs, errorbar="se", ax=ax,
                hue_order=sorted(data["method"].unique()), capsize=0.1)
    ax.set_xlabel("environment" if table.trained_on_every_env else "test environment")
    ax.set_ylabel(metric(table.metric).label)
    ax.set_title(f"{table.dataset} ({board.selection_title})", fontsize=10)
    ax.legend(title="method", fontsize=8)
    fig.tight_layout()
    return fig


def heatmap(board, table):
    """Mean score per method (rows) and test environment (columns)."""
    import seaborn as sns

    plt = _pyplot()
    data = _scores(board, table)
    envs = [c for c in table.columns if c in set(data["column"])]
    grid = data.pivot_table(index="method", columns="column", values="value", aggfunc="mean").reindex(columns=envs)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(envs) + 2.5), 0.6 * len(grid) + 1.6))
    meaning = metric(table.metric)
    # the colour map runs from bad (dark) to good (bright) whichever way is better
    sns.heatmap(grid, annot=True, fmt=meaning.digits,
                cmap="viridis" if meaning.higher_is_better is not False else "viridis_r",
                cbar_kws={"label": meaning.label}, ax=ax)
    ax.set_xlabel("environment" if table.trained_on_every_env else "test environment")
    ax.set_ylabel("method")
    ax.set_title(f"{table.dataset} ({board.selection_title})", fontsize=10)
    fig.tight_layout()
    return fig


def curves(board, table, records):
    """Score and penalty against step for the runs the selection picked."""
    import seaborn as sns

    plt = _pyplot()
    chosen = table.per_trial_of(board.per_trial)
    chosen = chosen[chosen["metric"] == table.metric]
    runs = set(chosen["run"])
    sub = records[records["run"].isin(runs)]
    evals = sub[(sub["kind"] == "eval") & (sub["metric"] == table.metric) & (sub["split"] == TRAIN)].copy()
    evals["role"] = [("test env" if env in tests else "training envs") for env, tests in zip(evals["env"], evals["test_envs"])]
    evals = evals.groupby(["method", "run", "step", "role"], as_index=False)["value"].mean()
    evals["value"] = evals["value"] * metric(table.metric).scale
    penalty = sub[(sub["kind"] == "train") & (sub["metric"] == "penalty")]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.6))
    if len(evals):
        sns.lineplot(data=evals, x="step", y="value", hue="method", style="role", errorbar="se", ax=axes[0],
                     hue_order=sorted(evals["method"].unique()))
        axes[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes[0].set_ylabel(metric(table.metric).label)
    axes[0].set_title("score ('train' split)", fontsize=10)
    if len(penalty):
        sns.lineplot(data=penalty, x="step", y="value", hue="method", errorbar="se", ax=axes[1],
                     hue_order=sorted(penalty["method"].unique()))
        if (penalty["value"] > 0).all():
            axes[1].set_yscale("log")
    else:
        axes[1].text(0.5, 0.5, "no method here has a penalty", ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set_ylabel("penalty (unweighted)")
    axes[1].set_title("penalty", fontsize=10)
    fig.suptitle(f"{table.dataset}: selected runs ({board.selection_title})", fontsize=10)
    fig.tight_layout()
    return fig


def write_plots(board, records, out_dir: Path | str) -> list[Path]:
    """Save every figure of every table with values as PNG files under ``out_dir``."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for table in board.tables:
        if _scores(board, table).empty:
            continue  # nothing selected: the table says why
        stem = _slug(f"{table.name}-{board.selection}")
        for kind, make in (("envs", lambda: env_bars(board, table)), ("heatmap", lambda: heatmap(board, table)),
                           ("curves", lambda: curves(board, table, records))):
            fig = make()
            path = out / f"{stem}-{kind}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths
