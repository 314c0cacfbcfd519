"""invbench collect DIR: a leaderboard of finished runs (last checkpoint), Markdown on stdout."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("collect", help="print a leaderboard of the run directories under DIR")
    parser.add_argument("dir", help="a folder of run directories (searched recursively)")
    parser.set_defaults(func=main)


def _mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return f"{mean:.4g} ± {math.sqrt(var / len(values)):.2g}"


def leaderboard_rows(root: Path) -> tuple[list[str], list[list[str]], int]:
    from benchmark.io import read_json
    from benchmark.runner import DONE, SPEC, load_records

    cells: dict[tuple, dict[str, list[float]]] = {}
    unfinished = 0
    for spec_path in sorted(Path(root).rglob(SPEC)):
        run_dir = spec_path.parent
        if not (run_dir / DONE).exists():
            unfinished += 1
            continue
        spec = read_json(spec_path)
        meta = read_json(run_dir / "dataset.json")
        last = load_records(run_dir)[-1]
        score = "mse" if meta["task"] == "regression" else "acc"
        names = meta["env_names"]
        key = (spec["dataset"], spec["method"], ",".join(names[i] for i in spec["test_envs"]) or "-",
               meta["source"]["name"])
        cell = cells.setdefault(key, {})
        train_scores = [last["envs"][names[i]]["train"][score] for i in meta["train_envs"]]
        cell.setdefault(f"train {score}", []).append(sum(train_scores) / len(train_scores))
        for i in spec["test_envs"]:
            cell.setdefault(f"test {score}", []).append(last["envs"][names[i]]["train"][score])
        for name, value in last.get("extra", {}).items():
            cell.setdefault(name, []).append(value)
    columns = sorted({c for cell in cells.values() for c in cell})
    rows = [[*key, str(len(next(iter(cell.values())))), *(_mean_se(cell.get(c, [])) for c in columns)]
            for key, cell in sorted(cells.items())]
    return ["dataset", "method", "test env", "source", "runs", *columns], rows, unfinished


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from benchmark.errors import ConfigError

    root = Path(args.dir)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder of run directories")
    header, rows, unfinished = leaderboard_rows(root)
    print(markdown(header, rows))
    if unfinished:
        print(f"\n{unfinished} unfinished run(s) left out.")
    return 0
