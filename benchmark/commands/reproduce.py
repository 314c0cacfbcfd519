"""invbench reproduce NAME: run a published table's protocol, keep its tidy results, report it.

The runs go to a run folder (default runs/reproduce/NAME); only their tidy results are kept
under results/NAME/tidy (committed), and every table, plot and README there is rebuilt from
those files. A long reproduction runs in chunks (``--methods``, ``--datasets``): each chunk
adds its finished runs to the tidy files, so nothing finished is lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

from invbench.commands.sweep import add_executor_flags

DEFAULT_RESULTS = "results"


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce a published table: run its protocol (packs, local or SLURM), "
                                         "keep its tidy results and write results/NAME/",
                       description="Run the reproduction's sweep (the runs not yet done), add the finished runs' "
                                   "tidy results to results/NAME/tidy, and rebuild results/NAME/ from them.")
    p.add_argument("name", nargs="?", help="the reproduction (omit, or --list, to list them)")
    p.add_argument("--list", action="store_true", help="list the reproductions with their sizes")
    p.add_argument("--methods", help="a chunk: only these methods (comma-separated)")
    p.add_argument("--datasets", help="a chunk: only these datasets (comma-separated names)")
    p.add_argument("--report-only", action="store_true", help="rebuild results/NAME/ from the tidy files, train nothing")
    p.add_argument("--export-only", action="store_true",
                   help="add the runs that finished in the run folder (a chunk stopped early, or a SLURM array) to "
                        "the tidy files and rebuild results/NAME/, without launching anything")
    p.add_argument("--small", action="store_true",
                   help="the small version that `make test` tracks (tiny data, few steps and trials)")
    p.add_argument("--runs", metavar="DIR", help="the run folder (default runs/reproduce/NAME)")
    p.add_argument("--results", metavar="DIR", default=DEFAULT_RESULTS,
                   help="where NAME/ is written (default results; --small: under the run folder)")
    add_executor_flags(p)
    p.add_argument("--data-dir", help="where image datasets look for data")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from invbench.reproduce.catalogue import REPRODUCTIONS, get

    if args.list or not args.name:
        for name, item in REPRODUCTIONS.items():
            config = _sweep(item, small=False)
            print(f"{name}: {item.title}; {run_count(config):,} runs (sweep {item.sweep}; "
                  f"selections {', '.join(item.selections)})")
        return 0
    reproduction = get(args.name)
    full = _with_flags(_sweep(reproduction, small=args.small), args)
    chunk = _chunk(full, args)
    folder = _results_root(args, full) / reproduction.name
    code = 0
    if not args.report_only:
        from invbench.sweep import launcher

        started = time.time()
        code = 0 if args.export_only else launcher.launch(chunk)
        wall = 0.0 if args.export_only else time.time() - started
        exported, new, span = _export(reproduction, chunk, folder)
        from invbench.reproduce.outputs import machine, record_chunk

        record_chunk(folder, {"chunk": _chunk_text(args) + ("; export only" if args.export_only else ""),
                              "small": args.small, "exit": code, "runs_exported": exported, "runs_new": new,
                              # an export of runs a stopped chunk left: the span from its first run's
                              # start to its last run's end, read from their done.json
                              "wall_seconds": round(span if args.export_only else wall, 1),
                              "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "machine": machine(), "command": "invbench reproduce " + shlex.join(sys.argv[2:])})
    written = _write(reproduction, full, folder, args)
    print(written.headline)
    print(f"wrote {len(written.files)} file(s) under {folder}", file=sys.stderr)
    return 0 if args.report_only or code == 0 else 1


def run_count(config) -> int:
    """The sweep's runs, counted without expanding (as the sweep's size check counts them)."""
    from invbench.registry import DATASETS
    from invbench.sweep.expansion import _test_env_sets, check_size, grid_points

    pairs = 0
    for entry in config.datasets:
        family = DATASETS.get(entry.name)
        sets = _test_env_sets(family, family.resolve_options(entry.options), entry.test_envs)
        pairs += len(sets) * sum(len(grid_points(config, m)) for m in entry.methods or config.methods)
    return check_size(config, pairs)


def _sweep(reproduction, small: bool):
    from invbench.registry import DATASETS
    from invbench.sweep.schema import load_sweep

    config = load_sweep(reproduction.sweep)
    config = dataclasses.replace(config, out=f"runs/reproduce/{reproduction.name}" + ("-small" if small else ""))
    if not small:
        return config
    shrink = dict(reproduction.small)
    options = shrink.pop("options", {})
    names = shrink.pop("datasets", None)
    keep = shrink.pop("entries", None)  # indices of the sweep's dataset entries
    methods = shrink.pop("methods", None)
    if methods is not None:
        shrink["methods"] = tuple(m for m in config.methods if m in methods)
    test_envs = shrink.pop("test_envs", None)
    entries = tuple(dataclasses.replace(e, options={**e.options, **{k: v for k, v in options.items()
                                                                    if k in DATASETS.get(e.name).options}},
                                        test_envs=e.test_envs if test_envs is None else test_envs,
                                        # the small version's steps win over an entry's own
                                        steps=None if "steps" in shrink else e.steps,
                                        eval_every=None if "eval_every" in shrink else e.eval_every)
                    for i, e in enumerate(config.datasets)
                    if (names is None or e.name in names) and (keep is None or i in keep))
    return _restrict_entries(dataclasses.replace(config, datasets=entries, **shrink))


def _with_flags(config, args):
    from invbench.commands.sweep import _slurm_settings
    from invbench.sweep.schema import apply_overrides

    return apply_overrides(config, out=args.runs, executor=args.executor, workers=args.workers, threads=args.threads,
                           runs_per_task=args.runs_per_task, pack_size=args.pack_size,
                           slurm=_slurm_settings(args.slurm), data_dir=args.data_dir)


def _chunk(config, args):
    """The sweep restricted to --methods and --datasets (ConfigError for names it does not have)."""
    from invbench.errors import ConfigError

    methods = _names(args.methods)
    datasets = _names(args.datasets)
    if methods:
        unknown = [m for m in methods if m not in config.methods]
        if unknown:
            raise ConfigError(f"--methods: {unknown} not in this reproduction; its methods: {', '.join(config.methods)}")
        config = dataclasses.replace(config, methods=tuple(m for m in config.methods if m in methods))
    if datasets:
        have = sorted({e.name for e in config.datasets})
        unknown = [d for d in datasets if d not in have]
        if unknown:
            raise ConfigError(f"--datasets: {unknown} not in this reproduction; its datasets: {', '.join(have)}")
        config = dataclasses.replace(config, datasets=tuple(e for e in config.datasets if e.name in datasets))
    return _restrict_entries(config)


def _restrict_entries(config):
    """Dataset entries reduced to the sweep's methods (an entry left without any is dropped),
    and sweep-wide hyperparameters to those its methods have (a chunk of other methods)."""
    from invbench.spec import hparam_space

    config = _entries_for_methods(config)
    known = set()
    for entry in config.datasets:
        for method in entry.methods or config.methods:
            known |= set(hparam_space(method, entry.name, protocol=config.preset))
    return dataclasses.replace(config, hparams={k: v for k, v in config.hparams.items() if k in known})


def _entries_for_methods(config):
    """Dataset entries reduced to the sweep's methods (an entry left without any is dropped)."""
    entries = tuple(e for e in config.datasets if not e.methods or set(e.methods) & set(config.methods))
    entries = tuple(dataclasses.replace(e, methods=tuple(m for m in e.methods if m in config.methods))
                    for e in entries)
    return dataclasses.replace(config, datasets=entries)


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _chunk_text(args) -> str:
    parts = [f"methods={args.methods}" if args.methods else "", f"datasets={args.datasets}" if args.datasets else ""]
    return "; ".join(p for p in parts if p) or "all"


def _export(reproduction, chunk, folder: Path) -> tuple[int, int, float]:
    """Add the chunk's finished runs to the tidy files; the number of runs exported, how many
    of them the tidy files did not have yet, and the seconds from the first one's start to
    the last one's end."""
    from invbench.reproduce import tidy
    from invbench.results.load import load_runs
    from invbench.sweep.expansion import expand

    if not chunk.out_root.is_dir():
        return 0, 0, 0.0
    results = load_runs(chunk.out_root)
    wanted = {spec.run_id for spec in expand(chunk)}
    mask = results.runs["run_id"].isin(wanted)
    if not mask.any():
        return 0, 0, 0.0
    kept = set(tidy.kept_run_ids(folder))
    results.runs = results.runs[mask]
    results.records = results.records[results.records["run_id"].isin(wanted)]
    tidy.export(results, folder, reproduction.keep)
    return int(mask.sum()), int((~results.runs["run_id"].isin(kept)).sum()), _span(results.runs["path"])


def _span(paths) -> float:
    from invbench.io import read_json
    from invbench.rundir import DONE

    ends, starts = [], []
    for path in paths:
        done = read_json(Path(path) / DONE)
        ends.append(float(done["time"]))
        starts.append(float(done["time"]) - float(done["wall_time"]))
    return max(ends) - min(starts) if ends else 0.0


def _write(reproduction, config, folder: Path, args):
    from invbench.reproduce.outputs import write_outputs

    command = f"invbench reproduce {reproduction.name}" + (" --small" if args.small else "")
    return write_outputs(reproduction, folder, _published_folder(args), run_count(config), protocol_lines(config),
                         sweep_header(reproduction), command)


def _results_root(args, config) -> Path:
    """--results; for --small when it is not given, a folder beside its runs (not results/)."""
    if args.small and args.results == DEFAULT_RESULTS:
        return config.out_root / "results"
    return Path(args.results)


def _published_folder(args) -> Path:
    """The published numbers: RESULTS/published, else the repository's results/published."""
    given = Path(args.results) / "published"
    if given.is_dir():
        return given
    return Path(__file__).resolve().parents[2] / DEFAULT_RESULTS / "published"


def protocol_lines(config) -> list[str]:
    """Each protocol the sweep's runs follow: its description and its deviations."""
    from invbench.protocol import get_protocol
    from invbench.registry import DATASETS

    names = [config.preset] if config.preset else []
    names += [DATASETS.get(e.name).protocol for e in config.datasets if not config.preset]
    lines = []
    for name in dict.fromkeys(n for n in names if n):
        protocol = get_protocol(name)
        lines.append(f"protocol `{name}`: {protocol.description}")
        lines += [f"protocol `{name}` deviates: {text}" for text in protocol.deviations]
    return lines


def sweep_header(reproduction) -> str:
    """The comment block at the top of the reproduction's sweep file."""
    from invbench.sweep.schema import shipped_sweeps

    text = shipped_sweeps()[reproduction.sweep].read_text()
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    return "\n".join(header)
