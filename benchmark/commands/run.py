"""invbench run: train one spec and write its run directory.

stdout: the run directory (alone with --quiet). stderr: progress, then the run's final
scores, also when the run was already done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from invbench.commands.common import add_spec_arguments, spec_from_args
from invbench.rundir import read_done, restore_spec


def register(sub) -> None:
    parser = sub.add_parser("run", help="train one run and write its run directory")
    add_spec_arguments(parser)
    parser.add_argument("--out", default="runs", help="root folder of run directories (default ./runs)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the run directory")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from invbench.runner import run
    from invbench.devices import check_device
    from invbench.sweep.preflight import check_output, preflight

    spec = spec_from_args(args)
    # bad input is one line before the run directory exists, not a failed run
    check_device(spec.device)
    check_output(args.out)
    before = read_done(Path(args.out) / spec.dirname, spec.run_id)
    if before is None:  # a finished run needs no checks of its data (the runner checks its source)
        preflight([spec])
    else:
        problem = restore_spec(Path(args.out) / spec.dirname, spec)
        if problem:  # its done.json names this spec: collect reads the run again
            print(f"invbench: note: {spec.dirname}: spec.json was {problem}; rewritten from this spec, "
                  f"since the run's done.json is valid for it", file=sys.stderr)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    run_dir = run(spec, args.out, log=log)
    print(run_dir, flush=True)
    if not args.quiet:
        # the same record as before: nothing was trained (a run done on other data is trained again)
        if before is not None and read_done(run_dir, spec.run_id) == before:
            print(f"{run_dir.name} was already done (its done.json is there); nothing was trained", file=sys.stderr)
        print(final_scores(run_dir), file=sys.stderr)
    return 0


def final_scores(run_dir: Path) -> str:
    """The last record's scores per environment and split, and its extra metrics, as a table."""
    from invbench.io import iter_jsonl, read_json
    from invbench.metrics import metric, score_metric
    from invbench.results.load import source_label
    from invbench.rundir import DATASET, METRICS
    from invbench.splits import SPLITS

    meta = read_json(run_dir / DATASET)
    records = [record for _, record, _ in iter_jsonl(run_dir / METRICS) if isinstance(record, dict)]
    if not records:
        return "no evaluation records"
    last = records[-1]
    score = score_metric(meta["task"])
    names = list(meta["env_names"])
    tests = {names[i] for i in meta.get("test_envs", [])}
    splits = [s for s in SPLITS if any(s in last["envs"].get(e, {}) for e in names)]
    rows = [["environment", "role", *(f"{split} split" for split in splits)]]
    for env in names:
        values = last["envs"].get(env, {})
        rows.append([env, "test" if env in tests else "train",
                     *(score.format(values[s][score.name]) if score.name in values.get(s, {}) else "" for s in splits)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"final scores at step {last['step']} ({source_label(meta['source'])}), {score.heading}:"]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    extras = last.get("extra") or {}
    if extras:
        lines.append("  " + ", ".join(f"{name} {metric(name).format(value)}" for name, value in extras.items()))
    return "\n".join(lines)
