"""Read every run directory under a folder into one tidy pandas DataFrame.

One row per value: (run, step, kind, env, split, metric, value), where kind is "eval"
(an environment's split metric: acc/mse/loss), "train" (the training window's averages:
loss, risk, penalty, ...) or "extra" (a dataset's extra metric, e.g. causal_error). Each
row also carries its run's description (dataset, source, method, trial, ...), so the
frame is self-contained; ``Results.runs`` has one row per run.

Every run directory found (a folder holding any file a run writes) is accounted for, once:
- finished: a valid done.json (rundir.check_done), spec.json and dataset.json: its rows
  are read;
- unfinished: no done.json, left out by default and counted by what its files say
  (started, failed, diverged: its loss became NaN or infinite), so that "unfinished" says
  whether a run is still running (or was killed) or raised;
- broken: a file it needs is missing or cannot be read (spec.json deleted, a garbage
  done.json, a folder without read permission), left out and named with the file and why.
Within a run, a truncated or corrupt line of metrics.jsonl, or a second record of one step,
is skipped with a warning naming the file and line, never a crash. Runs on different data
sources (a subset versus the full data) get different ``source`` labels, which are part of
every grouping key downstream.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invbench.io import iter_jsonl, read_json
from invbench.metrics import SCORE_METRIC
from invbench.rundir import DATASET, LOCK, METRICS, RUN_FILES, SPEC, check_done, is_set_aside, run_status

# Columns describing a run, repeated on each of its rows.
RUN_COLUMNS = ["run", "run_id", "dataset", "options", "source", "method", "config", "hparams_seed", "trial",
               "test_envs", "train_envs", "env_names", "task", "score", "status"]
VALUE_COLUMNS = ["step", "kind", "env", "split", "metric", "value"]
BROKEN_SHOWN = 3  # broken run directories named in the one-line summary (warnings name them all)


class CorruptRecordWarning(UserWarning):
    """A metrics line or run file that could not be read; it was skipped."""


class BrokenRunError(Exception):
    """A run directory left out: ``file`` is missing or unreadable, ``why`` says how."""

    def __init__(self, file: str, why: str):
        super().__init__(f"{file}: {why}")


@dataclass
class Results:
    """Everything read from a folder of run directories."""

    records: Any  # pandas.DataFrame, RUN_COLUMNS + VALUE_COLUMNS
    runs: Any  # pandas.DataFrame, one row per included run (RUN_COLUMNS + "path")
    # Runs left out because they have not finished: status -> run directory names.
    unfinished: dict[str, list[str]] = field(default_factory=dict)
    # Run directories left out because a file they need is missing or unreadable:
    # "DIR: FILE: why", one per directory.
    broken: list[str] = field(default_factory=list)
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
        if self.broken:
            shown = "; ".join(self.broken[:BROKEN_SHOWN])
            more = f"; and {len(self.broken) - BROKEN_SHOWN} more" if len(self.broken) > BROKEN_SHOWN else ""
            noun = "directory" if len(self.broken) == 1 else "directories"
            parts.append(f"{len(self.broken)} broken run {noun} left out ({shown}{more})")
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


def _warn(skipped: list[str] | None, message: str) -> None:
    if skipped is not None:
        skipped.append(message)
    warnings.warn(message, CorruptRecordWarning, stacklevel=3)


RUN_MARKERS = frozenset(RUN_FILES) | {LOCK}


def find_run_dirs(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every folder under ``root`` (itself included) holding a file that a run writes, and
    the folders that could not be listed, with why. Hidden folders (.submitit, .invbench)
    and run directories set aside (DIR.data-SOURCE-TIME, DIR.broken-TIME) are not searched."""
    found: list[Path] = []
    unlisted: list[tuple[Path, str]] = []

    def unreadable(error: OSError) -> None:
        unlisted.append((Path(error.filename), error.strerror or str(error)))

    for folder, subfolders, files in os.walk(root, onerror=unreadable):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and not is_set_aside(d))
        if RUN_MARKERS.intersection(files):
            found.append(Path(folder))
    return sorted(found), sorted(unlisted)


def _read_run_file(run_dir: Path, name: str, needed: tuple[str, ...]) -> dict:
    """A run's JSON file as a mapping holding the ``needed`` keys; BrokenRunError otherwise."""
    path = run_dir / name
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise BrokenRunError(name, "missing") from None
    except OSError as exc:
        raise BrokenRunError(name, f"cannot be read ({exc.strerror or exc})") from None
    except ValueError:
        raise BrokenRunError(name, "not valid JSON") from None
    if not isinstance(data, dict):
        raise BrokenRunError(name, "not a JSON object")
    missing = [key for key in needed if key not in data]
    if missing:
        raise BrokenRunError(name, f"lacks {', '.join(missing)}")
    return data


def _inspect(run_dir: Path, include_unfinished: bool) -> tuple[str, dict, dict | None, bool]:
    """(status, spec, dataset meta or None, whether its records are read) of one run
    directory; BrokenRunError when a file that the run needs is missing or unreadable."""
    spec = _read_run_file(run_dir, SPEC, ("dataset", "method", "run_id"))
    done, problem = check_done(run_dir, spec["run_id"])
    if problem:
        raise BrokenRunError("done.json", problem)
    status = "done" if done is not None else run_status(run_dir, spec["run_id"])
    if status != "done" and not (include_unfinished and (run_dir / DATASET).exists()):
        try:  # an unfinished run's dataset.json only labels its cell; the next attempt rewrites it
            meta = _read_run_file(run_dir, DATASET, ("source", "env_names"))
        except BrokenRunError:
            meta = None
        return status, spec, meta, False
    meta = _read_run_file(run_dir, DATASET, ("source", "env_names", "train_envs", "task"))
    if status == "done" and not (run_dir / METRICS).is_file():
        raise BrokenRunError(METRICS, "missing")
    if status == "done" and not os.access(run_dir / METRICS, os.R_OK):
        raise BrokenRunError(METRICS, "cannot be read (permission denied)")
    return status, spec, meta, True


def load_runs(root: Path | str, include_unfinished: bool = False) -> Results:
    """Read every run directory under ``root``, recursively (see the module's docstring).

    ``include_unfinished`` also reads runs without done.json (their records so far).
    """
    import pandas as pd

    root = Path(root)
    skipped: list[str] = []
    broken: list[str] = []
    unfinished: dict[str, list[str]] = {}
    loaded: list[tuple[Path, dict, dict, str]] = []
    pending: list[tuple[Path, dict, dict | None, str]] = []
    run_dirs, unlisted = find_run_dirs(root)
    for folder, why in unlisted:
        broken.append(f"{_relative(folder, root)}: cannot be listed ({why})")
        _warn(None, f"{folder}: cannot be listed ({why}); any runs in it are left out")
    for run_dir in run_dirs:
        try:
            status, spec, meta, included = _inspect(run_dir, include_unfinished)
        except BrokenRunError as exc:
            broken.append(f"{_relative(run_dir, root)}: {exc}")
            _warn(None, f"{run_dir}: {exc}; run left out")
            continue
        if not included:
            unfinished.setdefault(status, []).append(run_dir.name)
            pending.append((run_dir, spec, meta, status))
        else:
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
        kind = _unfinished_kind(status)
        why[kind] = why.get(kind, 0) + 1

    runs = pd.DataFrame(run_rows, columns=RUN_COLUMNS + ["path"])
    records = pd.DataFrame(value_rows, columns=RUN_COLUMNS + VALUE_COLUMNS)
    return Results(records=records, runs=runs, unfinished={k: sorted(v) for k, v in unfinished.items()},
                   broken=broken, skipped_lines=skipped, unfinished_cells=unfinished_cells,
                   unfinished_why=unfinished_why)


def _unfinished_kind(status: str) -> str:
    """diverged (the loss became non-finite), failed (another error) or unfinished (running, killed)."""
    return status if status in ("diverged", "failed") else "unfinished"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)


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
    first_line: dict[int, int] = {}  # step -> the line of its record
    try:
        lines = list(iter_jsonl(path))
    except OSError as exc:  # an unfinished run's file (a finished run's is checked before)
        _warn(skipped, f"{path}: cannot be read ({exc.strerror or exc}); no records")
        return rows
    for number, record, raw in lines:
        problem = None
        if record is None:
            problem = "not valid JSON (truncated?)"
        elif not isinstance(record, dict) or not isinstance(record.get("step"), int) \
                or not isinstance(record.get("envs"), dict):
            problem = "not a metrics record (needs an integer 'step' and an 'envs' mapping)"
        elif record["step"] in first_line:
            problem = f"a second record of step {record['step']} (the first is line {first_line[record['step']]})"
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
        first_line[step] = number
        rows.extend(line_rows)
    return rows
