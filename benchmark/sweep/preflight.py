"""Checks before any run starts, for what only the machine and the data can tell.

`invbench sweep launch` / `retry` (for the runs about to start) and `invbench run` call
these before anything is written or submitted, so that bad input is one line and exit 2,
never an error.json in every run directory:

- the output folder can be written (check_output);
- a run on this machine that asks for CUDA has CUDA (invbench.devices.check_device, check_local_device);
- each dataset can be built: its data is there, and a data directory given explicitly
  holds it (preflight);
- the model fits the data: a CNN needs images, mlp_grayscale needs channels (preflight);
- every training environment holds at least a batch (preflight).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from invbench.errors import ConfigError, DataUnavailableError
from invbench.outputs import check_folder
from invbench.devices import check_device
from invbench.sweep.schema import SweepConfig


def check_output(out_root: str | Path, flag: str = "--out") -> None:
    """The run directories can be written under ``out_root``: tried, not read off permission
    bits (see invbench.outputs); nothing is left behind."""
    check_folder(out_root, flag, "the runs")


def check_local_device(config: SweepConfig) -> None:
    """A sweep whose executor runs on this machine that asks for CUDA needs CUDA here; a
    SLURM task finds out on its node."""
    from invbench.sweep.executors import executor_class
    from invbench.sweep.executors.base import InProcessExecutor

    if issubclass(executor_class(config.executor.kind), InProcessExecutor):
        check_device(config.device, "device")


def preflight(specs: Sequence[Any]) -> None:
    """Build each distinct dataset once (data seed 0: which data there is, its shape and its
    environment sizes do not depend on the seed), then check that the data is there, that
    each spec's model fits it, and that every training environment holds a batch."""
    from invbench.models import check_model_fits
    from invbench.registry import DATASETS
    from invbench.trainer import build_dataset, check_batch_sizes

    built: dict[str, Any] = {}
    models_checked: set[tuple[str, str]] = set()
    for spec in specs:
        key = spec.data_key
        if key not in built:
            try:
                built[key] = build_dataset(spec, data_seed=0)
            except DataUnavailableError as exc:
                lines = " ".join(line.strip() for line in str(exc).splitlines())
                raise ConfigError(f"{spec.dataset}: {lines}") from None
        dataset = built[key]
        if (key, spec.model) not in models_checked:
            models_checked.add((key, spec.model))
            try:
                check_model_fits(spec.model, dataset.input_shape, dataset.n_outputs, dataset.task.kind)
            except ConfigError as exc:
                default = DATASETS.get(spec.dataset).model_for(spec.dataset_options)
                raise ConfigError(f"{spec.dataset}: {exc} "
                                  f"(the dataset's default model is {default!r})") from None
        batch = spec.hparams.get("batch_size", 0)
        if batch:
            train_envs = [i for i in range(len(dataset.envs)) if i not in spec.test_envs]
            try:
                check_batch_sizes(dataset, train_envs, batch)
            except ConfigError as exc:
                raise ConfigError(f"{spec.dataset} with {spec.method} (draw {spec.hparams_seed}): {exc}") from None
