"""invbench collect DIR: the leaderboard of the run directories under DIR.

Markdown on stdout by default; --format latex|csv|html; --plots DIR writes the
figures (PNG, PDF and SVG); --html FILE writes the self-contained report (tables and plots);
--save-baseline FILE writes the per-trial values that `invbench compare` reads (an
existing FILE only with --force: stored baselines are not overwritten by accident).

Without --selection the selection fits the runs: training-domain validation when they hold
out a val split, else the last checkpoint; stderr says which.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from invbench.results.selection import SELECTIONS, STRATEGIES


def register(sub) -> None:
    parser = sub.add_parser("collect", help="leaderboard of the run directories under DIR",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a folder of run directories (searched recursively)")
    parser.add_argument("--selection", "-s", choices=SELECTIONS,
                        help="model selection: " + ", ".join(f"{name} ({cls.title})" for name, cls in STRATEGIES.items())
                             + "; default: training-domain validation when the runs have a val split, else the last checkpoint")
    parser.add_argument("--format", "-f", default="md", choices=("md", "latex", "csv", "html"),
                        help="table format on stdout (default md)")
    parser.add_argument("--plots", metavar="DIR", help="write the figures (PNG, PDF and SVG) to DIR")
    parser.add_argument("--html", metavar="FILE", help="write the self-contained HTML report to FILE")
    parser.add_argument("--save-baseline", metavar="FILE", help="write the per-trial values (CSV) for `invbench compare`")
    parser.add_argument("--force", action="store_true", help="let --save-baseline overwrite an existing FILE")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="also use runs without done.json (their records so far)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from invbench.errors import ConfigError
    from invbench.results.aggregate import build_leaderboard
    from invbench.results.default_selection import default_selection, instead, why_empty
    from invbench.results.load import CorruptRecordWarning, load_runs
    from invbench.results.selection import get_strategy

    root = Path(args.dir)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder of run directories")
    if args.save_baseline and Path(args.save_baseline).exists() and not args.force:
        # checked before any work: a stored baseline overwritten by the results it is meant to
        # guard would make the next `invbench compare` compare the runs with themselves
        raise ConfigError(f"{args.save_baseline} exists; save the baseline to another path, or pass --force "
                          f"to overwrite it")
    check_outputs(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorruptRecordWarning)
        results = load_runs(root, include_unfinished=args.include_unfinished)
    for warning in caught:
        print(f"invbench: warning: {warning.message}", file=sys.stderr)
    if results.runs.empty and not results.unfinished and not results.broken:
        # an empty leaderboard (or baseline) from a mistyped folder would pass for a result
        raise ConfigError(f"no run directories under {root} (a run directory holds spec.json; "
                          f"`invbench sweep launch` or `invbench run` writes them)")
    selection = args.selection
    if selection is None:
        selection, why = default_selection(results)
        print(f"invbench: selection {selection}: {why} (--selection picks another)", file=sys.stderr)
    board = build_leaderboard(results, get_strategy(selection))
    if board.per_trial.empty and not results.runs.empty:
        other = instead(results, selection)
        if other is not None:
            raise ConfigError(f"selection {selection} gives no value for any cell ({why_empty(board)}); "
                              f"use --selection {other}")
    from invbench.results.render import render

    sys.stdout.write(render(board, args.format))
    if args.plots or args.html:
        from invbench.results.plots import write_plots

        plots = write_plots(board, results.records, args.plots or Path(args.html).parent / "plots")
        if args.html:
            from invbench.results.report import report_html

            Path(args.html).parent.mkdir(parents=True, exist_ok=True)
            Path(args.html).write_text(report_html(board, plots))
            print(f"wrote {args.html}", file=sys.stderr)
        if args.plots:
            print(f"wrote {len(plots)} figure(s) as PNG, PDF and SVG to {args.plots}", file=sys.stderr)
    if args.save_baseline:
        from invbench.results.compare import BASELINE_COLUMNS, save_baseline

        frame = board.per_trial.copy()
        frame.insert(2, "selection", board.selection)
        save_baseline(frame[BASELINE_COLUMNS], args.save_baseline)
        print(f"wrote {args.save_baseline}", file=sys.stderr)
    return 0


def check_outputs(args: argparse.Namespace) -> None:
    """Every output path can be written, checked before the table is computed or printed:
    a bad path is one line, never a traceback after the table."""
    from invbench.outputs import check_file, check_folder

    if args.html:
        check_file(args.html, "--html", "the report")
        if not args.plots:  # the report's plots go beside it
            check_folder(Path(args.html).parent / "plots", "--html", "the report's plots")
    if args.plots:
        check_folder(args.plots, "--plots", "the plots")
    if args.save_baseline:
        check_file(args.save_baseline, "--save-baseline", "the baseline")
