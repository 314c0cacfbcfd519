"""invbench run: train one spec and write its run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from invbench.commands.common import add_spec_arguments, spec_from_args
from invbench.rundir import DONE


def register(sub) -> None:
    parser = sub.add_parser("run", help="train one run and write its run directory")
    add_spec_arguments(parser)
    parser.add_argument("--out", default="runs", help="root folder of run directories (default ./runs)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the run directory")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from invbench.runner import run
    from invbench.sweep.preflight import check_device, check_output, preflight

    spec = spec_from_args(args)
    # bad input is one line before the run directory exists, not a failed run
    check_device(spec.device)
    check_output(args.out)
    if not (Path(args.out) / spec.dirname / DONE).exists():  # a finished run needs no data
        preflight([spec])
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    run_dir = run(spec, args.out, log=log)
    print(run_dir)
    return 0
