"""invbench sweep launch|status|retry|cancel FILE: run a sweep file locally or on SLURM.

The flags of a launch are kept with its runs (invbench.sweep.remembered): the next command
needs only FILE, or the folder the sweep was launched into; a flag given again wins.
The flags' meanings come from the sweep file's declarations (invbench.sweep.schema): a
flag overrides the key of the same name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from invbench.sweep.executors import EXECUTORS
from invbench.sweep.schema import SLURM_FLAG_KEYS, ExecutorSettings, SweepConfig, describe, flag


def register(sub) -> None:
    parser = sub.add_parser("sweep", help="launch, follow, retry or cancel a sweep file (local or SLURM)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "launch": "start the runs that are neither done, queued, running nor failed (safe to repeat)",
        "status": "counts per state, per dataset and method; failed runs with their error; ETA",
        "retry": "start the failed, stale and cancelled runs again",
        "cancel": "stop the sweep's queued and running runs (they read cancelled; launch resumes them)",
    }
    for action, text in helps.items():
        p = actions.add_parser(action, help=text, description=f"{text}. A flag overrides the sweep file's key "
                                                                  "of the same name.")
        p.add_argument("file", help="a sweep file (TOML), the name of a shipped one (e.g. demo), or the folder "
                                    "a sweep was launched into (its launch's flags are kept there)")
        p.add_argument("--out", help=describe(SweepConfig, "out"))
        if action in ("launch", "retry"):
            add_executor_flags(p)
        if action != "cancel":
            for name in ("steps", "eval_every", "trials", "hparam_draws"):
                p.add_argument(flag(name), type=int, help=describe(SweepConfig, name))
            for name in ("device", "data_dir"):
                p.add_argument(flag(name), help=describe(SweepConfig, name))
        p.set_defaults(func=main)


def add_executor_flags(p) -> None:
    """--executor, --workers, --threads, --runs-per-task, --pack-size, --slurm KEY=VALUE."""
    p.add_argument("--executor", choices=EXECUTORS, help=describe(ExecutorSettings, "kind"))
    for name in ("workers", "threads", "runs_per_task"):
        p.add_argument(flag(name), type=int, help=describe(ExecutorSettings, name))
    # text: the key's rule takes a number or "auto" and words its own error
    p.add_argument(flag("pack_size"), metavar="N|auto", help=describe(ExecutorSettings, "pack_size"))
    p.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                   help="an [executor.slurm] setting (repeatable): " + ", ".join(SLURM_FLAG_KEYS))


def _slurm_settings(items: list[str] | None) -> dict | None:
    from invbench.commands.common import parse_assignments

    # strings: each [executor.slurm] key's rule converts its own value
    return parse_assignments(items, "--slurm") or None


def _given(args: argparse.Namespace) -> dict:
    """The flags given on this command line (None = not given)."""
    names = ("out", "steps", "eval_every", "trials", "hparam_draws", "device", "data_dir", "executor", "workers",
             "threads", "runs_per_task", "pack_size")
    given = {name: getattr(args, name, None) for name in names}
    given["slurm"] = _slurm_settings(getattr(args, "slurm", None))
    return given


def load(args: argparse.Namespace):
    """The sweep with the launch's remembered flags and this command's on top; returns
    (config, the merged flags, the sweep file's text when it came from the record)."""
    from invbench.sweep import remembered
    from invbench.sweep.schema import apply_overrides, load_sweep

    given = _given(args)
    text = None
    if _is_sweep_folder(args.file):
        config, record = _from_folder(Path(args.file), given["out"], args.action)
        text = record["text"]
    else:
        config = load_sweep(args.file)
        record = remembered.recall(given["out"] or config.out, config.name)
    stored = dict(record["overrides"]) if record else {}
    if record:
        # where the record lies is where the runs are, even when the folder was moved since
        stored["out"] = str(Path(args.file) if text is not None else (given["out"] or config.out))
    merged = remembered.merge(stored, given, note=lambda line: print(f"invbench: note: {line}", file=sys.stderr))
    return apply_overrides(config, **merged), merged, text


def _is_sweep_folder(file: str) -> bool:
    from invbench.sweep.remembered import RECORDS

    return Path(file).is_dir() and (Path(file) / RECORDS).is_dir()


def _from_folder(folder: Path, out: str | None, action: str):
    """The sweep launched into ``folder``, from the record its launch left there."""
    from invbench.errors import ConfigError
    from invbench.sweep import remembered
    from invbench.sweep.schema import parse_sweep

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    if out is not None and Path(out).resolve() != folder.resolve():
        raise ConfigError(f"{folder} is the sweep's folder, and --out {out} another: give one of them")
    names = remembered.recorded_sweeps(folder)
    if len(names) != 1:
        raise ConfigError(f"{folder} holds the launches of {len(names)} sweeps ({', '.join(names) or 'none'}); "
                          f"name one: `invbench sweep {action} FILE --out {folder}`")
    record = remembered.recall(folder, names[0])
    path = remembered.record_path(folder, names[0])
    try:
        data = tomllib.loads(record.get("text") or "")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: the sweep file it keeps is not valid TOML ({exc})") from None
    if not data:
        raise ConfigError(f"{path} keeps no sweep file; give it: `invbench sweep {action} FILE --out {folder}`")
    return parse_sweep(data, source=record.get("file") or str(path), default_name=names[0]), record


def main(args: argparse.Namespace) -> int:
    from invbench.sweep import launcher, remembered

    config, merged, text = load(args)
    if args.action in ("launch", "retry"):
        return launcher.launch(config, mode=args.action,
                               before_submit=lambda: remembered.remember(config, merged, text))
    if args.action == "status":
        report, _ = launcher.status(config)
        print(report)
        return 0
    from invbench.sweep.executors.base import CancelError

    try:
        messages = launcher.cancel(config)
    except CancelError as exc:  # the scheduler's failure, not bad input: exit 1
        print(f"invbench: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(messages) if messages else "nothing to cancel")
    return 0
