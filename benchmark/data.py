"""What a dataset family builds: named environments with tensors per split.

The split names (TRAIN, VAL, TEST) come from invbench.splits. Data are built
deterministically from (options, data seed), kept in memory, moved to the device once and
indexed directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch

from invbench.errors import ConfigError
from invbench.hparams import HParam, validate_overrides
from invbench.splits import TRAIN, VAL
from invbench.tasks import Task


@dataclass
class Environment:
    name: str
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the colour-flip probability

    def size(self, split: str = TRAIN) -> int:
        return len(self.splits[split][1])

    def to(self, device: torch.device) -> "Environment":
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}
        return self


@dataclass
class Dataset:
    envs: list[Environment]
    task: Task
    input_shape: tuple[int, ...]
    n_outputs: int
    source: dict[str, Any]  # name, location, n_images: travels with every result
    metadata: dict[str, Any] = field(default_factory=dict)
    # Extra metrics of a trained model, e.g. the SEMs' coefficient errors.
    extra_metrics: Callable[[torch.nn.Module], dict[str, float]] | None = None

    @property
    def env_names(self) -> list[str]:
        return [env.name for env in self.envs]

    def to(self, device: torch.device) -> "Dataset":
        for env in self.envs:
            env.to(device)
        return self


class DatasetFamily:
    """Base class of registered datasets. Subclasses set the class attributes and build()."""

    name: ClassVar[str] = ""
    task: ClassVar[str] = "binary"
    options: ClassVar[dict[str, HParam]] = {}
    # The name of the protocol its runs follow unless they choose another (invbench.protocol):
    # hyperparameter defaults and searches per method, steps, evaluation interval.
    protocol: ClassVar[str | None] = None
    # Used only when the protocol leaves them open (or there is none).
    default_steps: ClassVar[int] = 1000
    default_eval_every: ClassVar[int] = 100
    default_holdout_fraction: ClassVar[float] = 0.0
    default_test_envs: ClassVar[tuple[int, ...]] = ()
    model: ClassVar[str] = "mlp"  # the default model; a spec may choose another
    # What the family's oracle data is, in one line (None: it has none); build_oracle makes it.
    oracle: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the old per-dataset defaults applied by hyperparameter name to any method; refuse
        # them rather than ignore them
        stale = [name for name in ("hparam_defaults", "hparam_search") if getattr(cls, name, None)]
        if stale:
            raise ConfigError(f"dataset class {cls.__qualname__} sets {', '.join(stale)}: hyperparameter values "
                              f"belong in a protocol (invbench.protocol.Protocol), named by protocol = '...'")

    @classmethod
    def model_for(cls, options: Mapping[str, Any]) -> str:
        return cls.model

    @classmethod
    def default_test_envs_for(cls, options: Mapping[str, Any]) -> tuple[int, ...]:
        """The test environments when the spec names none; they may move with the options
        (Colored MNIST's test environments come after however many training ones)."""
        return cls.default_test_envs

    @classmethod
    def resolve_options(cls, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """All options with defaults filled in, validated, in a canonical order."""
        values = {name: opt.default for name, opt in cls.options.items()}
        values.update(validate_overrides(cls.options, dict(given or {}), f"dataset {cls.name!r}", kind="option"))
        cls.check_options(values)
        return dict(sorted(values.items()))

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Cross-option checks; raise ConfigError."""

    @classmethod
    def env_names(cls, options: Mapping[str, Any]) -> list[str]:
        raise NotImplementedError

    @classmethod
    def check_test_envs(cls, options: Mapping[str, Any], test_envs: tuple[int, ...]) -> None:
        n = len(cls.env_names(options))
        bad = [e for e in test_envs if not 0 <= e < n]
        if bad:
            raise ConfigError(
                f"test environment(s) {bad} do not exist in dataset {cls.name!r}: "
                f"its environments are 0..{n - 1} ({', '.join(cls.env_names(options))})"
            )
        if len(set(test_envs)) == n:
            raise ConfigError(f"dataset {cls.name!r}: at least one environment must be left for training")

    def build(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
              data_dir: str | None) -> Dataset:
        raise NotImplementedError

    def build_oracle(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
                     data_dir: str | None) -> Dataset:
        """The oracle data: the same environments, sizes and test splits as ``build``, with the
        spurious signal removed from what the oracle trains and selects on (the ``oracle``
        method's data: the reference a method that ignored the spurious signal would reach)."""
        raise ConfigError(f"dataset {self.name!r} defines no oracle data")


def shuffle_columns(x: torch.Tensor, columns: slice, generator: torch.Generator) -> torch.Tensor:
    """x with the ``columns`` block permuted across rows: that block keeps its distribution
    but loses its link with the rest of the row (and with the label)."""
    out = x.clone()
    out[:, columns] = x[torch.randperm(len(x), generator=generator), columns]
    return out


def holdout_split(x: torch.Tensor, y: torch.Tensor, fraction: float, generator: torch.Generator
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A seeded random split into TRAIN and VAL (the last ``fraction`` of a permutation)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"holdout fraction must be in [0, 1); got {fraction}")
    if fraction == 0.0:
        return {TRAIN: (x, y)}
    perm = torch.randperm(len(y), generator=generator)
    n_val = int(len(y) * fraction)  # floor, as DomainBed's int(len(env) * holdout_fraction)
    val, train = perm[:n_val], perm[n_val:]
    return {TRAIN: (x[train], y[train]), VAL: (x[val], y[val])}
