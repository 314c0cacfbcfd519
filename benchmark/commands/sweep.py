"""invbench sweep launch|status|retry|cancel FILE: run a sweep file locally or on SLURM.

The flags' meanings come from the sweep file's declarations (invbench.sweep.schema): a
flag overrides the key of the same name.
"""

from __future__ import annotations

import argparse

from invbench.sweep.executors import EXECUTORS
from invbench.sweep.schema import SLURM_FLAG_KEYS, ExecutorSettings, SweepConfig, describe, flag


def register(sub) -> None:
    parser = sub.add_parser("sweep", help="launch, follow, retry or cancel a sweep file (local or SLURM)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "launch": "start the runs that are neither done, queued, running nor failed (safe to repeat)",
        "status": "counts per state, per dataset and method; failed runs with their error; ETA",
        "retry": "start the failed and stale runs again",
        "cancel": "stop the sweep's queued and running runs",
    }
    for action, text in helps.items():
        p = actions.add_parser(action, help=text, description=f"{text}. A flag overrides the sweep file's key "
                                                                  "of the same name.")
        p.add_argument("file", help="a sweep file (TOML), or the name of a shipped one, e.g. demo")
        p.add_argument("--out", help=describe(SweepConfig, "out"))
        if action in ("launch", "retry"):
            p.add_argument("--executor", choices=EXECUTORS, help=describe(ExecutorSettings, "kind"))
            for name in ("workers", "threads", "runs_per_task"):
                p.add_argument(flag(name), type=int, help=describe(ExecutorSettings, name))
            p.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                           help="an [executor.slurm] setting (repeatable): " + ", ".join(SLURM_FLAG_KEYS))
        if action != "cancel":
            for name in ("steps", "eval_every", "trials", "hparam_draws"):
                p.add_argument(flag(name), type=int, help=describe(SweepConfig, name))
            for name in ("device", "data_dir"):
                p.add_argument(flag(name), help=describe(SweepConfig, name))
        p.set_defaults(func=main)


def load(args: argparse.Namespace):
    from invbench.commands.common import parse_assignments
    from invbench.sweep.schema import apply_overrides, load_sweep

    config = load_sweep(args.file)
    return apply_overrides(
        config, out=args.out, steps=getattr(args, "steps", None), eval_every=getattr(args, "eval_every", None),
        trials=getattr(args, "trials", None), hparam_draws=getattr(args, "hparam_draws", None),
        device=getattr(args, "device", None), data_dir=getattr(args, "data_dir", None),
        executor=getattr(args, "executor", None), workers=getattr(args, "workers", None),
        threads=getattr(args, "threads", None), runs_per_task=getattr(args, "runs_per_task", None),
        # strings: each [executor.slurm] key's rule converts its own value
        slurm=parse_assignments(getattr(args, "slurm", None), "--slurm") or None,
    )


def main(args: argparse.Namespace) -> int:
    from invbench.sweep import launcher

    config = load(args)
    if args.action in ("launch", "retry"):
        return launcher.launch(config, mode=args.action)
    if args.action == "status":
        text, _ = launcher.status(config)
        print(text)
        return 0
    messages = launcher.cancel(config)
    print("\n".join(messages) if messages else "nothing to cancel")
    return 0
