"""invbench sweep launch|status|retry|cancel FILE: run a sweep file locally or on SLURM."""

from __future__ import annotations

import argparse


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
        p = actions.add_parser(action, help=text, description=text)
        p.add_argument("file", help="a sweep file (TOML), or the name of a shipped one, e.g. demo")
        p.add_argument("--out", help="root of the run directories (overrides the file's out)")
        if action in ("launch", "retry"):
            p.add_argument("--executor", choices=("inline", "local", "slurm"), help="overrides [executor] kind")
            p.add_argument("--workers", type=int, help="local: worker processes (0 = the number of cores)")
            p.add_argument("--threads", type=int, help="torch threads per run (0 = cores // workers locally, cpus_per_task on SLURM)")
            p.add_argument("--runs-per-task", type=int, help="slurm: runs sharing one array task")
            p.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                           help="a SLURM setting (repeatable): partition, account, qos, time_min, mem_gb, "
                                "cpus_per_task, gpus_per_node, array_parallelism, job_name")
        if action != "cancel":
            p.add_argument("--steps", type=int, help="training steps of every run")
            p.add_argument("--eval-every", type=int, help="evaluation interval of every run")
            p.add_argument("--trials", type=int, help="number of trials (data seeds)")
            p.add_argument("--hparam-draws", type=int, help="number of hyperparameter draws, >= 1 (draw 0 is the defaults)")
            p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
            p.add_argument("--data-dir", help="where image datasets look for data")
        p.set_defaults(func=main)


def _slurm_settings(items: list[str] | None) -> dict | None:
    from invbench.commands.common import parse_assignments

    values = parse_assignments(items, "--slurm")
    out = {}
    for key, value in values.items():
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out or None


def load(args: argparse.Namespace):
    from invbench.sweep.config import apply_overrides, load_sweep

    config = load_sweep(args.file)
    return apply_overrides(
        config, out=args.out, steps=getattr(args, "steps", None), eval_every=getattr(args, "eval_every", None),
        trials=getattr(args, "trials", None), hparam_draws=getattr(args, "hparam_draws", None),
        device=getattr(args, "device", None), data_dir=getattr(args, "data_dir", None),
        executor=getattr(args, "executor", None), workers=getattr(args, "workers", None),
        threads=getattr(args, "threads", None), runs_per_task=getattr(args, "runs_per_task", None),
        slurm=_slurm_settings(getattr(args, "slurm", None)),
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
