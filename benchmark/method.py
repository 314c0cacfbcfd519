"""What a method is: an objective over per-environment batches, plus its own state.

A method does not own the training loop, the device or any I/O. The runner composes the
step's loss as

    loss = (objective.risk + l2 * sum ||theta||^2 + objective.penalty_weight * objective.penalty)
           / objective.divide_by

so the IRM code's "divide the whole loss by the penalty weight" schedule covers the l2 term
too, as it does there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from invbench.errors import ConfigError
from invbench.hparams import HParam
from invbench.tasks import Task

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, labels) of one training environment


@dataclass
class Objective:
    risk: torch.Tensor  # the method's risk term (ERM: mean of the environments' losses)
    penalty: torch.Tensor | None = None  # unweighted penalty, if the method has one
    penalty_weight: float = 0.0
    divide_by: float = 1.0
    env_losses: torch.Tensor | None = None  # per-environment mean losses, for logs
    logs: dict[str, float] = field(default_factory=dict)


class Method:
    """Base class of registered methods. The first docstring line is the one-line description."""

    name: ClassVar[str] = ""
    hparams: ClassVar[dict[str, HParam]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "presets", None):  # the old home of a paper's tuned values: refuse, not ignore
            raise ConfigError(f"method class {cls.__qualname__} sets presets: a paper's tuned values belong in "
                              f"a protocol (invbench.protocol.Protocol) with method_hparams for this method")

    def __init__(self, hparams: Mapping[str, Any], n_envs: int, task: Task,
                 env_sizes: Sequence[int] | None = None):
        self.hp = dict(hparams)
        self.n_envs = n_envs
        self.task = task
        # Training examples per environment (group DRO's generalisation adjustment uses them).
        self.env_sizes = list(env_sizes) if env_sizes is not None else None

    def objective(self, model: nn.Module, batches: Sequence[Batch], step: int) -> Objective:
        raise NotImplementedError

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any], steps: int) -> list[str]:
        """Valid but suspicious combinations, as messages for a warning (none by default)."""
        return []

    def optimizer_reset_step(self) -> int | None:
        """A step at which the runner re-creates the optimizer (DomainBed's anneal), or None."""
        return None

    # Method state (group DRO's weights): saved and restored with the training checkpoint.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def to(self, device: torch.device) -> "Method":
        return self

    # Helpers for subclasses --------------------------------------------------------------

    @staticmethod
    def env_logits(model: nn.Module, batches: Sequence[Batch]) -> list[torch.Tensor]:
        """One forward pass over all environments' inputs, split back per environment."""
        logits = model(torch.cat([x for x, _ in batches]))
        return list(torch.split(logits, [len(y) for _, y in batches]))

    def env_losses(self, logits: Sequence[torch.Tensor], batches: Sequence[Batch]) -> torch.Tensor:
        return torch.stack([self.task.loss(out, y) for out, (_, y) in zip(logits, batches)])
