"""invbench compare BASELINE CURRENT: flag regressions (exit 1) with Welch's t-test over trials.

BASELINE and CURRENT are each a folder of run directories or a baseline CSV written by
`invbench collect DIR --save-baseline FILE` (stored ones live in results/baselines/).
"""

from __future__ import annotations

import argparse
import sys

from invbench.results.selection import DEFAULT_SELECTION, SELECTIONS


def register(sub) -> None:
    parser = sub.add_parser("compare", help="compare results with a baseline; exit 1 on a significant drop",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="folder of run directories, or a baseline CSV")
    parser.add_argument("current", help="folder of run directories, or a baseline CSV")
    parser.add_argument("--selection", "-s", default=DEFAULT_SELECTION, choices=SELECTIONS,
                        help=f"model selection used on both sides (default {DEFAULT_SELECTION})")
    parser.add_argument("--threshold", type=float, default=1.0,
                        help="a drop larger than this (accuracy in percentage points; MSE in its units) "
                             "is a regression when significant (default 1.0)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of Welch's t-test (default 0.05)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from invbench.errors import ConfigError
    from invbench.results.compare import compare_frames, comparison_markdown, per_trial_values

    if args.threshold < 0 or not 0 < args.alpha < 1:
        raise ConfigError(f"--threshold must be >= 0 and --alpha in (0, 1); got {args.threshold}, {args.alpha}")
    base = per_trial_values(args.baseline, args.selection)
    cur = per_trial_values(args.current, args.selection)
    comparisons, only_base, only_cur = compare_frames(base, cur, args.threshold, args.alpha)
    if not comparisons:
        raise ConfigError(f"no cell is in both {args.baseline} and {args.current} (selection {args.selection}); "
                          f"nothing to compare")
    sys.stdout.write(comparison_markdown(comparisons, only_base, only_cur, args.threshold, args.alpha))
    return 1 if any(c.verdict == "regression" for c in comparisons) else 0
