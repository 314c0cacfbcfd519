"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
from typing import Any

from invbench.errors import ConfigError
from invbench.devices import DEVICES
from invbench.sufficient import TRAIN_DATA


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """["a=1", "b=x"] -> {"a": "1", "b": "x"}; values are converted by the declarations."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{what} must look like name=value; got {item!r}")
        out[name.strip()] = value.strip()
    return out


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", "-d", required=True, help="a registered dataset (invbench list datasets)")
    parser.add_argument("--method", "-m", required=True, help="a registered method (invbench list methods)")
    parser.add_argument("--option", "-o", action="append", metavar="NAME=VALUE", help="dataset option (repeatable)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE", dest="overrides",
                        help="hyperparameter value (repeatable); wins over the protocol and the draw")
    parser.add_argument("--protocol", "--preset", dest="preset", metavar="NAME",
                        help="follow this protocol instead of the dataset's own, e.g. irm-paper "
                             "(invbench list protocols)")
    parser.add_argument("--test-env", type=int, action="append", dest="test_envs",
                        help="test environment index (repeatable; default: the dataset's)")
    parser.add_argument("--trial", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--hparams-seed", type=int, default=0, help="hyperparameter draw; 0 = defaults")
    parser.add_argument("--steps", type=int, help="training steps (default: the protocol's)")
    parser.add_argument("--eval-every", type=int, help="evaluate every N steps")
    parser.add_argument("--holdout", type=float, dest="holdout_fraction", help="fraction held out as 'val'")
    parser.add_argument("--model", help="model (default: the protocol's or the dataset's; `invbench list models` lists them)")
    parser.add_argument("--data-dir", help="where image datasets look for data (or INVBENCH_DATA)")
    parser.add_argument("--device", default="auto", help=f"{DEVICES} (default auto)")
    parser.add_argument("--train-data", default="examples", choices=TRAIN_DATA,
                        help="train on the examples (default) or on each environment's sufficient statistics: "
                             "exact and faster for squared-error linear models through the origin, full batch")


def spec_from_args(args: argparse.Namespace):
    from invbench.spec import make_spec

    return make_spec(
        args.dataset, args.method,
        dataset_options=parse_assignments(args.option, "--option"),
        test_envs=args.test_envs, trial=args.trial, hparams_seed=args.hparams_seed,
        overrides=parse_assignments(args.overrides, "--set"), preset=args.preset,
        steps=args.steps, eval_every=args.eval_every, holdout_fraction=args.holdout_fraction,
        model=args.model, data_dir=args.data_dir, device=args.device, train_data=args.train_data,
    )
