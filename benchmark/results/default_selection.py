"""Which model selection fits the runs at hand, when none was asked for.

Training-domain validation (DomainBed's default) needs a "val" split, which only runs with
a holdout fraction > 0 have: the DomainBed datasets hold out 20 %, the IRM protocol's and
the linear ones none (they report the last checkpoint). So the default follows the data: training-domain validation when the
runs hold out a val split, else the last checkpoint. A selection that gives no value for
any cell is answered with the one that does, instead of a table of n/a.
"""

from __future__ import annotations

from pathlib import Path

from invbench.results.selection import LAST, TRAINING_DOMAIN
from invbench.splits import VAL


def has_val_split(results) -> bool:
    """Whether any loaded run evaluated a "val" split."""
    records = results.records
    return bool(len(records)) and bool(((records["kind"] == "eval") & (records["split"] == VAL)).any())


def default_selection(source) -> tuple[str, str]:
    """(selection name, why it fits) for a loaded Results or a folder of run directories."""
    if isinstance(source, (str, Path)):
        from invbench.results.load import load_runs

        source = load_runs(source)
    if has_val_split(source):
        return TRAINING_DOMAIN, "the runs hold out a val split"
    return LAST, "the runs have no val split (holdout 0), so each run's final checkpoint is reported"


def instead(results, asked: str) -> str | None:
    """Another selection that gives values where ``asked`` gave none, or None."""
    from invbench.results.aggregate import build_leaderboard
    from invbench.results.selection import get_strategy

    for name in (default_selection(results)[0], TRAINING_DOMAIN, LAST):
        if name != asked and not build_leaderboard(results, get_strategy(name)).per_trial.empty:
            return name
    return None


def why_empty(board) -> str:
    """The reason the cells of an empty leaderboard give, the most common first."""
    from collections import Counter

    reasons = Counter(cell.note for table in board.tables for _, cells in table.rows.values()
                      for cell in cells.values() if cell.mean is None and cell.note)
    return reasons.most_common(1)[0][0] if reasons else "no cell has a value"
