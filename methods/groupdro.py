"""Group DRO: online minimisation of the worst-case mixture of environment risks."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from invbench.errors import ConfigError
from invbench.hparams import HParam, LogUniform
from invbench.method import Batch, Method, Objective
from invbench.registry import METHODS


@METHODS.register("groupdro")
class GroupDRO(Method):
    """Group DRO: exponentiated-gradient weights q over environments; minimise sum_e q_e R_e.

    Sagawa, Koh, Hashimoto & Liang (2020), "Distributionally Robust Neural Networks for Group
    Shifts", Algorithm 1, with the groups being the training environments (as DomainBed's
    GroupDRO). q starts uniform; at every step, with L_e the mean loss of environment e's batch,

        q_e <- q_e * exp(eta * (L_e + C / sqrt(n_e))),   q <- q / sum(q),
        objective = sum_e q_e * L_e          (q treated as a constant)   [+ l2 term, runner]

    where the update uses the current step's losses before the objective is formed (Algorithm 1
    and DomainBed), C / sqrt(n_e) is the optional generalisation adjustment (section 3.3; n_e =
    the environment's number of training examples, C = ``adjustment``, 0 = none) and it only
    enters the q update, never the minimised loss. q is the method's state, saved and restored
    with the training checkpoint, so a resumed run continues the same weights.
    """

    hparams = {
        "eta": HParam(0.01, LogUniform(-3, -1), low=0.0, high=100.0,
                      help="step size of the exponentiated-gradient update of the environment weights"),
        "adjustment": HParam(0.0, low=0.0, high=1e6,
                             help="C of the generalisation adjustment C / sqrt(n_e) in the weight update (0 = off)"),
    }

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        if self.hp["adjustment"] and self.env_sizes is None:
            raise ConfigError("groupdro: adjustment > 0 needs the training environments' sizes; "
                              "this caller did not pass env_sizes (use adjustment=0)")
        if self.env_sizes is not None and len(self.env_sizes) != n_envs:
            raise ConfigError(f"groupdro: got {len(self.env_sizes)} environment sizes for {n_envs} environments")
        # float64: q_e is multiplied every step and must not underflow to an absorbing 0.
        self.q = torch.full((n_envs,), 1.0 / n_envs, dtype=torch.float64)
        sizes = self.env_sizes or [1] * n_envs
        self.adjust = torch.tensor([self.hp["adjustment"] / math.sqrt(n) for n in sizes], dtype=torch.float64)

    def objective(self, model: nn.Module, batches: Sequence[Batch], step: int) -> Objective:
        losses = self.env_losses(self.env_logits(model, batches), batches)
        self.update_weights(losses.detach())
        risk = (self.q.to(losses.dtype) * losses).sum()
        logs = {f"q{e}": float(value) for e, value in enumerate(self.q.tolist())}
        return Objective(risk=risk, env_losses=losses, logs=logs)

    def update_weights(self, losses: torch.Tensor) -> None:
        """One exponentiated-gradient step on the simplex (Algorithm 1, line 6)."""
        q = self.q * torch.exp(self.hp["eta"] * (losses.to(self.q) + self.adjust))
        self.q = q / q.sum()

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        q = torch.as_tensor(state["q"], dtype=torch.float64)
        if q.shape != self.q.shape:
            raise ConfigError(f"groupdro: saved weights have shape {tuple(q.shape)}, expected {tuple(self.q.shape)}")
        self.q = q.to(self.q.device)

    def to(self, device: torch.device) -> "GroupDRO":
        self.q, self.adjust = self.q.to(device), self.adjust.to(device)
        return self
