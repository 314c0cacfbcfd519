"""Packs: compatible run specs that train together as one batched computation.

A pack is an execution detail: each of its runs keeps its id, run directory and records.
Runs are compatible (one ``pack_key``) when they share the dataset and its options, the
model, the method, steps, eval_every, holdout_fraction, test_envs, train_data, device, data_dir, and
every hyperparameter that is not a per-run number. Per-run numbers may differ inside a
pack (they become per-run tensors): integers and floats whose declaration
(invbench.hparams.HParam) does not change tensor shapes (``shapes=True``: batch_size,
hidden_dim). Booleans, choices (strings) and tuples must be equal. Trials (data seeds) and
hyperparameter draws may differ.

``make_packs`` splits specs into packs of at most ``pack_size`` runs, in the order given
(deterministic). ``pack_size`` 1 trains every run alone. ``"auto"`` picks a size per kind
of pack from the memory one run needs (``run_memory_bytes``): at most a quarter of the
available memory (CUDA: the device's free memory; CPU: MemAvailable) split over the
workers, at most 256 runs, and small enough that every worker gets a pack when there are
as many specs as workers.

This module is imported by the launcher, which `invbench sweep status` loads: torch is
imported only inside the functions that size packs.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

from invbench.spec import RunSpec

AUTO = "auto"
MAX_AUTO_PACK = 256
MEMORY_SHARE = 4  # auto uses at most 1/MEMORY_SHARE of the available memory
BYTES = 4  # float32
STATE_COPIES = 4  # weights, gradients and Adam's two moments
ACTIVATION_COPIES = 3  # forward activations, their gradients, and a temporary


def check_pack_size(value: Any) -> int | str:
    """A positive integer or "auto"; ValueError with the one-line message otherwise."""
    if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"pack_size must be a positive integer or 'auto'; got {value!r}")


# Compatibility ------------------------------------------------------------------------------

def pack_key(spec: RunSpec) -> Hashable:
    """What runs of one pack share; two specs with equal keys may train together."""
    per_run = _per_run_names(spec.method, spec.dataset, spec.model)
    shared = {name: value for name, value in spec.hparams.items()
              if not (name in per_run and _is_number(value))}
    return (spec.dataset, _canonical(spec.dataset_options), spec.model, spec.method, spec.steps, spec.eval_every,
            spec.holdout_fraction, tuple(spec.test_envs), spec.train_data, spec.device, spec.data_dir,
            _canonical(shared))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _canonical(mapping: Mapping[str, Any]) -> str:
    return json.dumps({str(k): v for k, v in mapping.items()}, sort_keys=True, default=repr)


@functools.lru_cache(maxsize=None)
def _per_run_names(method: str, dataset: str, model: str) -> frozenset[str]:
    """Hyperparameters declared as numbers that keep tensor shapes (may differ inside a pack)."""
    from invbench.spec import hparam_space

    space = hparam_space(method, dataset, model=model)
    return frozenset(name for name, hp in space.items() if hp.type in (int, float) and not hp.shapes)


# Packs ------------------------------------------------------------------------------------

MemoryPerWorker = Callable[[str], int]  # device name -> bytes one worker may use there


def make_packs(specs: Sequence[RunSpec], pack_size: int | str, workers: int = 1, *,
               memory_per_worker: MemoryPerWorker | None = None) -> list[list[RunSpec]]:
    """``specs`` grouped by ``pack_key`` (groups in order of first appearance, specs in the
    order given) and each group cut into packs of at most ``pack_size``.

    ``"auto"`` sizes each group's packs from its memory (``auto_pack_size``);
    ``memory_per_worker`` gives the memory one worker may use on a device (None: what is
    available on this machine, split over ``workers``)."""
    pack_size = check_pack_size(pack_size)
    if pack_size == 1:  # today's engine: every run alone, in the order given
        return [[spec] for spec in specs]
    groups: dict[Hashable, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(pack_key(spec), []).append(spec)
    if pack_size == AUTO:
        sizes = {key: auto_pack_size(group, workers, memory_per_worker) for key, group in groups.items()}
        if sum(math.ceil(len(g) / sizes[k]) for k, g in groups.items()) < workers:
            # fewer packs than workers would leave some idle: split each group over them
            sizes = {k: max(1, min(sizes[k], math.ceil(len(g) / workers))) for k, g in groups.items()}
    else:
        sizes = dict.fromkeys(groups, pack_size)
    return [group[i:i + sizes[key]] for key, group in groups.items() for i in range(0, len(group), sizes[key])]


def run_memory_bytes(n_params: int, batch_rows: int, widest: int, layers: int, data_bytes: int = 0) -> int:
    """Memory one run of a pack needs: its parameters in four copies (weights, gradients,
    Adam's two moments), its activations (batch rows x widest layer x layers, three copies)
    in float32, and ``data_bytes`` of its own data (when its pack-mates train on other trials)."""
    return (n_params * STATE_COPIES * BYTES + batch_rows * widest * layers * ACTIVATION_COPIES * BYTES
            + data_bytes)


def pack_size_for(run_bytes: int, budget_bytes: int, cap: int = MAX_AUTO_PACK) -> int:
    """How many runs of ``run_bytes`` fit in ``budget_bytes``: between 1 and ``cap``."""
    return max(1, min(cap, budget_bytes // max(run_bytes, 1)))


@dataclass(frozen=True)
class RunShape:
    """What decides one run's memory (``run_memory_bytes``)."""

    n_params: int
    batch_rows: int
    widest: int
    layers: int
    data_bytes: int


def run_shape(spec: RunSpec) -> RunShape:
    """The shape of ``spec``'s run: its model built on torch's meta device (no memory) for
    its data (built with data seed 0: sizes do not depend on the seed)."""
    import torch

    from invbench.data import TRAIN
    from invbench.models import build_model
    from invbench.registry import DATASETS

    dataset = DATASETS.get(spec.dataset)().build(spec.dataset_options, 0, spec.holdout_fraction, spec.data_dir)
    with torch.device("meta"):
        model = build_model(spec.model, dataset.input_shape, dataset.n_outputs, dict(spec.hparams))
    weights = [p for p in model.parameters() if p.dim() >= 2]
    widest = max([math.prod(dataset.input_shape), *(p.shape[0] for p in weights)])
    train_envs = [env for i, env in enumerate(dataset.envs) if i not in spec.test_envs]
    batch = spec.hparams.get("batch_size", 0)
    rows = sum(env.size(TRAIN) if not batch else batch for env in train_envs)
    data_bytes = sum(t.numel() * t.element_size() for env in dataset.envs for split in env.splits.values()
                     for t in split)
    return RunShape(sum(p.numel() for p in model.parameters()), rows, widest, max(len(weights), 1), data_bytes)


def available_memory_bytes(device: str) -> int:
    """Free memory of ``device``: CUDA's free memory (when CUDA is here), or this machine's
    MemAvailable (a SLURM login node without a GPU sizes by its own memory)."""
    if device == "auto" or device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = int(device.partition(":")[2] or torch.cuda.current_device())
            return torch.cuda.mem_get_info(index)[0]
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_pack_size(group: Sequence[RunSpec], workers: int = 1, memory_per_worker: MemoryPerWorker | None = None
                   ) -> int:
    """The "auto" size of packs of ``group`` (specs with one pack_key)."""
    first = group[0]
    shape = run_shape(first)
    trials_differ = len({spec.trial for spec in group}) > 1
    run_bytes = run_memory_bytes(shape.n_params, shape.batch_rows, shape.widest, shape.layers,
                                 shape.data_bytes if trials_differ else 0)
    if memory_per_worker is None:
        memory = available_memory_bytes(first.device) // max(workers, 1)
    else:
        memory = memory_per_worker(first.device)
    return pack_size_for(run_bytes, memory // MEMORY_SHARE)
