"""invbench list [methods|datasets|protocols|models]"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser("list", help="list registered methods, datasets, protocols and models with their settings")
    parser.add_argument("what", nargs="?", choices=("methods", "datasets", "protocols", "models"),
                        help="only one registry")
    parser.set_defaults(func=main)


def _table(space, indent: str = "    ") -> list[str]:
    lines = []
    for name, hp in space.items():
        search = f"; search {hp.search}" if hp.search is not None else ""
        help_text = f" - {hp.help}" if hp.help else ""
        lines.append(f"{indent}{name} = {hp.default!r} ({hp.allowed()}{search}){help_text}")
    return lines


def _values(values, searches) -> str:
    parts = [f"{k}={v!r}" for k, v in sorted(values.items())]
    parts += [f"{k} {'fixed' if v is None else 'searched in ' + str(v)}" for k, v in sorted(searches.items())]
    return "; ".join(parts)


def _protocol_lines(protocol) -> list[str]:
    settings = [f"made for {', '.join(protocol.datasets)}"]
    settings += [f"{key} {getattr(protocol, key)}" for key in ("steps", "eval_every", "model", "selection")
                 if getattr(protocol, key) is not None]
    lines = [f"  {protocol.name}: {protocol.description}", f"    {'; '.join(settings)}"]
    if protocol.hparams or protocol.search:
        lines.append(f"    every method: {_values(protocol.hparams, protocol.search)}")
    for method in sorted({*protocol.method_hparams, *protocol.method_search}):
        values = _values(protocol.method_hparams.get(method, {}), protocol.method_search.get(method, {}))
        lines.append(f"    {method}: {values}")
    for method in sorted({*protocol.method_models, *protocol.method_steps}):
        own = [f"model {protocol.method_models[method]}"] if method in protocol.method_models else []
        own += [f"{protocol.method_steps[method]} steps"] if method in protocol.method_steps else []
        lines.append(f"    {method} trains with: {', '.join(own)}")
    lines += [f"    deviation: {text}" for text in protocol.deviations]
    return lines


def main(args: argparse.Namespace) -> int:
    from invbench.hparams import ARCHITECTURE_HPARAMS, TRAINING_HPARAMS
    from invbench.registry import DATASETS, METHODS, describe

    out: list[str] = []
    if args.what in (None, "methods"):
        out.append("methods:")
        for name, method in METHODS.items():
            out.append(f"  {name}: {describe(method)}")
            out += _table(method.hparams)
        out.append("  training hyperparameters (every method):")
        out += _table(TRAINING_HPARAMS)
        from invbench.models import MODEL_HPARAMS

        readers = sorted(m for m, names in MODEL_HPARAMS.items() if names)
        out.append(f"  model hyperparameters (only runs whose model reads them: {', '.join(readers)}):")
        out += _table(ARCHITECTURE_HPARAMS)
    if args.what in (None, "datasets"):
        from invbench.protocol import get_protocol

        out.append("datasets:")
        for name, family in DATASETS.items():
            protocol = get_protocol(family.protocol) if family.protocol else None
            steps = (protocol.steps if protocol else None) or family.default_steps
            model = (protocol.model if protocol else None) or family.model
            named = f"; protocol {family.protocol}" if family.protocol else ""
            out.append(f"  {name}: {describe(family)} [{family.task}; model {model}; {steps} steps{named}]")
            out += _table(family.options)
            if family.oracle:
                out.append(f"    oracle data (method oracle): {family.oracle}")
    if args.what in (None, "protocols"):
        from invbench.protocol import PROTOCOLS, get_protocol

        out.append("protocols (a dataset follows its own; choose another with --protocol NAME):")
        for name in PROTOCOLS.names():
            out += _protocol_lines(get_protocol(name))
    if args.what in (None, "models"):
        from invbench.models import MODEL_HPARAMS, MODELS, accepts_of

        out.append("models (--model NAME; a dataset names its default):")
        for name in MODELS.names():
            accepts = accepts_of(name)
            reads = MODEL_HPARAMS.get(name, ())
            extra = f"; reads {', '.join(reads)}" if reads else ""
            out.append(f"  {name}: {describe(MODELS.get(name))} [inputs {accepts.inputs}; tasks "
                       f"{', '.join(accepts.tasks)}{extra}]")
    print("\n".join(out))
    return 0
