"""invbench compare BASELINE CURRENT: flag regressions (exit 1) with Welch's t-test over trials.

BASELINE and CURRENT are each a folder of run directories or a baseline CSV written by
`invbench collect DIR --save-baseline FILE` (stored ones live in results/baselines/).
A cell regresses when it got significantly worse by more than its metric's threshold:
accuracy by 1 percentage point, the error metrics (MSE, ...) by 5 % of the baseline's mean.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from invbench.results.selection import SELECTIONS, TRAINING_DOMAIN


def register(sub) -> None:
    parser = sub.add_parser("compare", help="compare results with a baseline; exit 1 on a significant drop",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="folder of run directories, or a baseline CSV")
    parser.add_argument("current", help="folder of run directories, or a baseline CSV")
    parser.add_argument("--selection", "-s", choices=SELECTIONS,
                        help="model selection used on both sides (default: a baseline CSV's own selection, "
                             "else what fits the runs, as for `invbench collect`)")
    parser.add_argument("--threshold", action="append", metavar="[METRIC=]VALUE",
                        help="a significant drop larger than this is a regression: accuracy in percentage points "
                             "(default 1), error metrics in percent of the baseline's mean (default 5); "
                             "VALUE sets every metric, METRIC=VALUE one (repeatable)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of Welch's t-test (default 0.05)")
    parser.add_argument("--moved", type=float, metavar="TOLERANCE",
                        help="regression tracking of deterministic runs: instead of the t-test, list every per-trial "
                             "value that moved by more than TOLERANCE (relative; absolute below 1) and every cell or "
                             "trial on one side only; exit 1 if any")
    parser.set_defaults(func=main)


def parse_thresholds(items: list[str] | None) -> dict | None:
    """["2", "mse=10"] -> {None: 2.0, "mse": 10.0}; None when none was given."""
    from invbench.errors import ConfigError

    if not items:
        return None
    out: dict = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if number != number or number < 0 or (sep and not name.strip()):
            raise ConfigError(f"--threshold must be VALUE or METRIC=VALUE with VALUE >= 0; got {item!r}")
        out[name.strip() if sep else None] = number
    return out


def main(args: argparse.Namespace) -> int:
    from invbench.errors import ConfigError
    from invbench.results.compare import compare_frames, comparison_markdown, per_trial_values

    thresholds = parse_thresholds(args.threshold)
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1); got {args.alpha}")
    selection = args.selection or _default_selection(args.baseline, args.current)
    base = per_trial_values(args.baseline, selection)
    cur = per_trial_values(args.current, selection)
    if args.moved is not None:
        from invbench.results.compare import moved_values

        if args.moved < 0:
            raise ConfigError(f"--moved must be >= 0; got {args.moved}")
        moved = moved_values(base, cur, args.moved)
        print("\n".join(moved) if moved else f"no value moved by more than {args.moved:g} "
                                              f"({len(cur)} per-trial values, selection {selection})")
        return 1 if moved else 0
    comparisons, only_base, only_cur = compare_frames(base, cur, thresholds, args.alpha)
    if not comparisons:
        raise ConfigError(f"no cell is in both {args.baseline} and {args.current} (selection {selection}); "
                          f"nothing to compare")
    sys.stdout.write(comparison_markdown(comparisons, only_base, only_cur, thresholds, args.alpha))
    return 1 if any(c.verdict == "regression" for c in comparisons) else 0


def _default_selection(*sources: str) -> str:
    """A baseline CSV's selection (when it holds one), else the one that fits the runs."""
    from invbench.results.compare import baseline_selections
    from invbench.results.default_selection import default_selection

    for source in sources:
        if Path(source).is_file():
            chosen = baseline_selections(source)
            if len(chosen) == 1:
                print(f"invbench: selection {chosen[0]} (that of {source}; --selection picks another)",
                      file=sys.stderr)
                return chosen[0]
    for source in sources:
        if Path(source).is_dir():
            name, why = default_selection(Path(source))
            print(f"invbench: selection {name} ({why}; --selection picks another)", file=sys.stderr)
            return name
    return TRAINING_DOMAIN  # neither side readable: per_trial_values says why
