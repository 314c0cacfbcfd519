"""Tidy results of a reproduction: what is kept of its runs, so that nothing finished is lost.

A reproduction's run directories are large and live on one machine; its tidy files are small
and committed (results/NAME/tidy/*.csv.gz). They hold, per finished run, the rows that its
leaderboards are built from: the score of every environment and split and the extra metrics
(causal errors), at the evaluation steps the reproduction's selections read (the last one,
or all of them for selections that pick a checkpoint). Everything else (losses, training
logs, checkpoints) stays behind. The tables are built from these files alone, so a chunk
that finished on a machine since replaced still counts.

Each file holds one chunk key (dataset and method): re-exporting a chunk replaces the rows
of the runs it has again and keeps the others, so runs finished earlier are never dropped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TIDY_FOLDER = "tidy"
# Run columns stored as JSON text (tuples do not survive CSV)
LIST_COLUMNS = ("test_envs", "train_envs", "env_names")
KEEP_CHOICES = ("last", "all")


def tidy_records(results: Any, keep: str) -> Any:
    """The rows of ``results`` (invbench.results.load.Results) that leaderboards read:
    evaluation scores and extra metrics, at the last evaluated step of each run or at all."""
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}; got {keep!r}")
    records = results.records
    scores = (records["kind"] == "eval") & (records["metric"] == records["score"])
    rows = records[scores | (records["kind"] == "extra")]
    if keep == "last":
        last = rows.groupby("run")["step"].transform("max")
        rows = rows[rows["step"] == last]
    rows = rows.drop(columns=[c for c in ("status",) if c in rows.columns]).copy()
    for column in LIST_COLUMNS:
        rows[column] = rows[column].map(lambda v: json.dumps(list(v)))
    return rows.sort_values(["run", "step", "kind", "env", "split", "metric"]).reset_index(drop=True)


def chunk_file(folder: Path, dataset: str, method: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9=.,_-]+", "_", f"{dataset}__{method}")
    return folder / TIDY_FOLDER / f"{name}.csv.gz"


def export(results: Any, folder: Path, keep: str) -> list[Path]:
    """Write (merge) the tidy rows of ``results`` into ``folder``/tidy, one file per
    (dataset, method); returns the files written. Rows of runs not in ``results`` stay."""
    import pandas as pd

    rows = tidy_records(results, keep)
    written = []
    for (dataset, method), part in rows.groupby(["dataset", "method"], sort=True):
        path = chunk_file(folder, dataset, method)
        if path.exists():
            old = pd.read_csv(path, keep_default_na=False, na_values=[""])
            part = pd.concat([old[~old["run_id"].isin(set(part["run_id"]))], part], ignore_index=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".partial")
        part.sort_values(["run", "step", "kind", "env", "split", "metric"]).to_csv(
            temporary, index=False, compression={"method": "gzip", "mtime": 0})  # floats in full; same bytes, same file
        temporary.replace(path)  # never half a file where a finished chunk was
        written.append(path)
    return written


def kept_run_ids(folder: Path) -> list[str]:
    """The ids of the runs the tidy files of ``folder`` hold (none when there are no files)."""
    import pandas as pd

    ids: set[str] = set()
    for path in sorted((folder / TIDY_FOLDER).glob("*.csv.gz")):
        ids |= set(pd.read_csv(path, usecols=["run_id"])["run_id"])
    return sorted(ids)


def load(folder: Path) -> Any:
    """The tidy files of ``folder`` as a Results object that leaderboards can be built from."""
    import pandas as pd

    from invbench.results.load import RUN_COLUMNS, Results

    from invbench.errors import ConfigError

    files = sorted((folder / TIDY_FOLDER).glob("*.csv.gz"))
    if not files:
        raise ConfigError(f"no tidy results in {folder / TIDY_FOLDER}: run the reproduction (or a chunk of it) "
                          f"first; --report-only only rebuilds from them")
    records = pd.concat([pd.read_csv(f, keep_default_na=False, na_values=[""]) for f in files], ignore_index=True)
    for column in LIST_COLUMNS:
        records[column] = records[column].map(lambda text: tuple(json.loads(text)))
    records["env"] = records["env"].fillna("")
    records["split"] = records["split"].fillna("")
    records["status"] = "done"
    runs = records.drop_duplicates("run")[[c for c in RUN_COLUMNS]].copy()
    runs["path"] = ""
    return Results(records=records[list(RUN_COLUMNS) + ["step", "kind", "env", "split", "metric", "value"]],
                   runs=runs.reset_index(drop=True))
