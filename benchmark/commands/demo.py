"""invbench demo: the default benchmark, then its leaderboard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_METHODS = ("erm", "irm", "vrex", "groupdro")
DEMO_TRIALS = 3


def register(sub) -> None:
    parser = sub.add_parser("demo", help="run the default benchmark and print its leaderboard")
    parser.add_argument("--out", default="runs/demo", help="root of the demo's run directories")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from benchmark.commands.collect import leaderboard_rows, markdown
    from benchmark.registry import METHODS
    from benchmark.runner import run
    from benchmark.spec import make_spec

    methods = [m for m in DEMO_METHODS if m in METHODS]
    specs = [make_spec("linear_sem", method, trial=trial) for method in methods for trial in range(DEMO_TRIALS)]
    for index, spec in enumerate(specs, start=1):
        print(f"[{index}/{len(specs)}] {spec.dirname}", file=sys.stderr)
        run(spec, args.out)
    header, rows, _ = leaderboard_rows(Path(args.out))
    print(markdown(header, rows))
    return 0
