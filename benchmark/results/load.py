"""Read every run directory under a folder into one tidy pandas DataFrame.

One row per value: (run, step, kind, env, split, metric, value), where kind is "eval"
(an environment's split metric: acc/mse/loss), "train" (the training window's averages:
loss, risk, penalty, ...) or "extra" (a dataset's extra metric, e.g. causal_error). Each
row also carries its run's description (dataset, source, method, trial, ...), so the
frame is self-contained; ``Results.runs`` has one row per run.

Robustness, the faults of DomainBed's collation that we avoid:
- a truncated or corrupt line of metrics.jsonl is skipped with a warning naming the file
  and line, never a crash;
- a run without done.json is left out by default and counted (started versus failed), so
  "unfinished" says whether a run is still running (or was killed) or raised;
- runs on different data sources (a subset versus the full data) get different ``source``
  labels, which are part of every grouping key downstream.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invbench.io import iter_jsonl, read_json
from invbench.metrics import SCORE_METRIC

from invbench.rundir import DATASET, ERROR, METRICS, SPEC, run_status

# Columns describing a run, repeated on each of its rows.
RUN_COLUMNS = ["run", "run_id", "dataset", "options", "source", "method", "config", "hparams_seed", "trial",
               "test_envs", "train_envs", "env_names", "task", "score", "status"]
VALUE_COLUMNS = ["step", "kind", "env", "split", "metric", "value"]


class CorruptRecordWarning(UserWarning):
    """A metrics line or run file that could not be read; it was skipped."""


@dataclass
class Results:
    """Everything read from a folder of run directories."""

    records: Any  # pandas.DataFrame, RUN_COLUMNS + VALUE_COLUMNS
    runs: Any  # pandas.DataFrame, one row per included run (RUN_COLUMNS + "path")
    # Runs left out because they have not finished: status -> run directory names.
    unfinished: dict[str, list[str]] = field(default_factory=dict)
    # Run directories that could not be read at all (bad spec/dataset JSON), with why.
    unreadable: list[str] = field(default_factory=list)
    skipped_lines: list[str] = field(default_factory=list)  # "file:line: why"
    # Runs left out as unfinished, per cell key (dataset, source, method, test_envs):
    # lets a missing cell say "runs unfinished" instead of "no runs".
    unfinished_cells: dict[tuple, int] = field(default_factory=dict)
    # The same runs per cell key by why they are unfinished: "diverged" (the loss became
    # non-finite), "failed" (another error) or "unfinished" (running, or killed).
    unfinished_why: dict[tuple, dict[str, int]] = field(default_factory=dict)

    @property
    def n_unfinished(self) -> int:
        return sum(len(v) for v in self.unfinished.values())

    def summary(self) -> str:
        """One line for people: what was included and what was left out."""
        parts = [f"{len(self.runs)} finished run(s)"]
        if self.unfinished:
            detail = ", ".join(f"{len(v)} {k}" for k, v in sorted(self.unfinished.items()))
            parts.append(f"{self.n_unfinished} unfinished left out ({detail})")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable run director{'y' if len(self.unreadable) == 1 else 'ies'}")
        if self.skipped_lines:
            parts.append(f"{len(self.skipped_lines)} corrupt line(s) skipped")
        return "; ".join(parts)


def source_label(source: dict) -> str:
    """The data source as a label: its name and size, so a subset never shares a cell with the full set."""
    name = source.get("name", "?")
    n = source.get("n_images")
    return f"{name} (n={n})" if n is not None else str(name)


def _config(spec: dict) -> str:
    """What distinguishes two candidates of one selection problem: hyperparameters and schedule."""
    keys = ("hparams", "steps", "eval_every", "holdout_fraction", "model")
    return json.dumps({k: spec.get(k) for k in keys}, sort_keys=True, separators=(",", ":"))


def _dataset_labels(specs: list[dict]) -> dict[str, dict[str, str]]:
    """dataset name -> options JSON -> label naming only the options that differ between runs.

    Two runs of linear_sem with hidden=True and hidden=False are different datasets; a
    label like "linear_sem[hidden=True]" keeps them apart without printing every option.
    """
    by_name: dict[str, dict[str, dict]] = {}
    for spec in specs:
        options = spec.get("dataset_options") or {}
        by_name.setdefault(spec["dataset"], {})[json.dumps(options, sort_keys=True)] = options
    labels: dict[str, dict[str, str]] = {}
    for name, variants in by_name.items():
        keys = sorted({k for o in variants.values() for k in o})
        varying = [k for k in keys if len({json.dumps(o.get(k)) for o in variants.values()}) > 1]
        labels[name] = {}
        for key, options in variants.items():
            if varying:
                shown = ",".join(f"{k}={_short(options.get(k))}" for k in varying)
                labels[name][key] = f"{name}[{shown}]"
            else:
                labels[name][key] = name
    return labels


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_short(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _warn(skipped: list[str], message: str) -> None:
    skipped.append(message)
    warnings.warn(message, CorruptRecordWarning, stacklevel=3)


def load_runs(root: Path | str, include_unfinished: bool = False) -> Results:
    """Read every run directory (a folder holding spec.json) under ``root``, recursively.

    ``include_unfinished`` also reads runs without done.json (their records so far).
    """
    import pandas as pd

    root = Path(root)
    skipped: list[str] = []
    unreadable: list[str] = []
    unfinished: dict[str, list[str]] = {}
    loaded: list[tuple[Path, dict, dict, str]] = []
    pending: list[tuple[Path, dict, dict | None, str]] = []
    for spec_path in sorted(root.rglob(SPEC)):
        run_dir = spec_path.parent
        status = run_status(run_dir)
        try:
            spec = read_json(spec_path)
            meta = read_json(run_dir / DATASET) if (run_dir / DATASET).exists() else None
        except (OSError, json.JSONDecodeError) as exc:
            unreadable.append(f"{run_dir}: {exc}")
            _warn(skipped, f"{run_dir}: unreadable spec.json or dataset.json ({exc}); run skipped")
            continue
        if status != "done" and not (include_unfinished and meta is not None):
            unfinished.setdefault(status, []).append(run_dir.name)
            pending.append((run_dir, spec, meta, status))
            continue
        if meta is None:
            unreadable.append(f"{run_dir}: done but no dataset.json")
            _warn(skipped, f"{run_dir}: finished run without dataset.json; run skipped")
            continue
        loaded.append((run_dir, spec, meta, status))

    labels = _dataset_labels([spec for _, spec, _, _ in loaded + pending])
    run_rows, value_rows = [], []
    for run_dir, spec, meta, status in loaded:
        row = _run_row(run_dir, root, spec, meta, status, labels)
        run_rows.append({**row, "path": str(run_dir)})
        for step_row in _value_rows(run_dir / METRICS, skipped):
            value_rows.append({**row, **step_row})
    unfinished_cells: dict[tuple, int] = {}
    unfinished_why: dict[tuple, dict[str, int]] = {}
    for run_dir, spec, meta, status in pending:
        names = meta["env_names"] if meta else None
        tests = tuple(names[i] for i in spec.get("test_envs", ())) if names else tuple(map(str, spec.get("test_envs", ())))
        key = (_label(spec, labels), source_label(meta["source"]) if meta else None, spec["method"], tests)
        unfinished_cells[key] = unfinished_cells.get(key, 0) + 1
        why = unfinished_why.setdefault(key, {})
        kind = _unfinished_kind(run_dir, status)
        why[kind] = why.get(kind, 0) + 1

    runs = pd.DataFrame(run_rows, columns=RUN_COLUMNS + ["path"])
    records = pd.DataFrame(value_rows, columns=RUN_COLUMNS + VALUE_COLUMNS)
    return Results(records=records, runs=runs, unfinished={k: sorted(v) for k, v in unfinished.items()},
                   unreadable=unreadable, skipped_lines=skipped, unfinished_cells=unfinished_cells,
                   unfinished_why=unfinished_why)


def _unfinished_kind(run_dir: Path, status: str) -> str:
    """diverged (the runner's FloatingPointError: the loss became non-finite), failed, or unfinished."""
    if status != "failed":
        return "unfinished"
    try:
        error = read_json(run_dir / ERROR)
    except (OSError, ValueError):
        return "failed"
    return "diverged" if isinstance(error, dict) and error.get("type") == "FloatingPointError" else "failed"


def _label(spec: dict, labels: dict) -> str:
    return labels[spec["dataset"]][json.dumps(spec.get("dataset_options") or {}, sort_keys=True)]


def _run_row(run_dir: Path, root: Path, spec: dict, meta: dict, status: str, labels: dict) -> dict:
    names = list(meta["env_names"])
    return {
        # The directory, not the spec id: the same spec run on two data sources (the id
        # leaves out machine fields such as the data directory) gives two runs.
        "run": run_dir.relative_to(root).as_posix(),
        "run_id": spec.get("run_id", ""),
        "dataset": _label(spec, labels),
        "options": json.dumps(spec.get("dataset_options") or {}, sort_keys=True),
        "source": source_label(meta["source"]),
        "method": spec["method"],
        "config": _config(spec),
        "hparams_seed": int(spec.get("hparams_seed", 0)),
        "trial": int(spec.get("trial", 0)),
        # names, in environment-index order: tuples are hashable grouping keys
        "test_envs": tuple(names[i] for i in meta.get("test_envs", spec.get("test_envs", ()))),
        "train_envs": tuple(names[i] for i in meta["train_envs"]),
        "env_names": tuple(names),
        "task": meta["task"],
        "score": SCORE_METRIC[meta["task"]],
        "status": status,
    }


def _value_rows(path: Path, skipped: list[str]) -> list[dict]:
    rows: list[dict] = []
    if not path.exists():
        return rows
    for number, record, raw in iter_jsonl(path):
        problem = None
        if record is None:
            problem = "not valid JSON (truncated?)"
        elif not isinstance(record, dict) or not isinstance(record.get("step"), int) \
                or not isinstance(record.get("envs"), dict):
            problem = "not a metrics record (needs an integer 'step' and an 'envs' mapping)"
        if problem:
            _warn(skipped, f"{path}:{number}: {problem}; line skipped")
            continue
        step, line_rows = record["step"], []
        try:
            for env, splits in record["envs"].items():
                for split, metrics in splits.items():
                    for metric, value in metrics.items():
                        line_rows.append({"step": step, "kind": "eval", "env": env, "split": split,
                                          "metric": metric, "value": float(value)})
            for kind in ("train", "extra"):
                for metric, value in (record.get(kind) or {}).items():
                    line_rows.append({"step": step, "kind": kind, "env": "", "split": "", "metric": metric,
                                      "value": float(value)})
        except (AttributeError, TypeError, ValueError) as exc:
            _warn(skipped, f"{path}:{number}: malformed values ({exc}); line skipped")
            continue
        rows.extend(line_rows)
    return rows
