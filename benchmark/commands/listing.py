"""invbench list [methods|datasets]"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser("list", help="list registered methods and datasets with their settings")
    parser.add_argument("what", nargs="?", choices=("methods", "datasets"), help="only one registry")
    parser.set_defaults(func=main)


def _table(space, indent: str = "    ") -> list[str]:
    lines = []
    for name, hp in space.items():
        search = f"; search {hp.search}" if hp.search is not None else ""
        help_text = f" - {hp.help}" if hp.help else ""
        lines.append(f"{indent}{name} = {hp.default!r} ({hp.allowed()}{search}){help_text}")
    return lines


def main(args: argparse.Namespace) -> int:
    from invbench.hparams import TRAINING_HPARAMS
    from invbench.registry import DATASETS, METHODS, describe

    out: list[str] = []
    if args.what in (None, "methods"):
        out.append("methods:")
        for name, method in METHODS.items():
            out.append(f"  {name}: {describe(method)}")
            out += _table(method.hparams)
            if method.presets:
                out.append(f"    presets: {', '.join(sorted(method.presets))}")
        out.append("  training hyperparameters (every method):")
        out += _table(TRAINING_HPARAMS)
    if args.what in (None, "datasets"):
        out.append("datasets:")
        for name, family in DATASETS.items():
            out.append(f"  {name}: {describe(family)} [{family.task}; model {family.model}; "
                       f"{family.default_steps} steps]")
            out += _table(family.options)
            if family.hparam_defaults:
                changed = ", ".join(f"{k}={v!r}" for k, v in sorted(family.hparam_defaults.items()))
                out.append(f"    protocol defaults: {changed}")
            if family.hparam_search:
                searched = ", ".join(f"{k} {'fixed' if v is None else v}" for k, v in sorted(family.hparam_search.items()))
                out.append(f"    protocol search: {searched}")
    print("\n".join(out))
    return 0
