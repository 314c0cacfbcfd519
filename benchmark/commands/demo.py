"""invbench demo: the default benchmark, run by the sweep launcher, then its leaderboard.

The benchmark is the shipped sweep file benchmark/sweeps/demo.toml (the IRM paper's linear
SEM, four methods, three trials), run with the local executor on this machine's cores. Run
it again at any time: finished runs are kept, interrupted ones resume.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("demo", help="run the default benchmark (sweep file demo.toml) and print its leaderboard")
    parser.add_argument("--out", default="runs/demo", help="root of the demo's run directories")
    parser.add_argument("--workers", type=int, help="worker processes (default: the number of cores)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from invbench.sweep import launcher
    from invbench.sweep.remembered import remember
    from invbench.sweep.schema import apply_overrides, load_sweep, shipped_sweeps

    flags = {"out": args.out, "executor": "local", "workers": args.workers}
    config = apply_overrides(load_sweep(shipped_sweeps()["demo"]), **flags)
    # kept with the runs: `invbench sweep status OUT` follows the demo's sweep
    code = launcher.launch(config, before_submit=lambda: remember(config, flags))
    # The leaderboard at the last checkpoint (the IRM paper's SEM protocol reports the
    # final model), with the HTML report and plots beside the runs.
    from invbench.results.report import demo_summary

    print(demo_summary(Path(config.out), Path(config.out) / "report", selection="last"))
    return code
