"""Group DRO: online minimisation of the worst-case mixture of environment risks."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from invbench.errors import ConfigError
from invbench.hparams import HParam, LogUniform
from invbench.method import Batch, Method, Objective
from invbench.packed import PackedModel
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

    exact_on_sufficient_statistics = True  # only each environment's mean loss

    hparams = {
        "eta": HParam(0.01, LogUniform(-3, -1), low=0.0, high=100.0,
                      help="step size of the exponentiated-gradient update of the environment weights"),
        "adjustment": HParam(0.0, low=0.0, high=1e6,
                             help="C of the generalisation adjustment C / sqrt(n_e) in the weight update (0 = off)"),
    }

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        if any(self.hp.values("adjustment")) and self.env_sizes is None:
            raise ConfigError("groupdro: adjustment > 0 needs the training environments' sizes; "
                              "this caller did not pass env_sizes (use adjustment=0)")
        if self.env_sizes is not None and len(self.env_sizes) != n_envs:
            raise ConfigError(f"groupdro: got {len(self.env_sizes)} environment sizes for {n_envs} environments")
        # (R, E), float64: q_e is multiplied every step and must not underflow to an absorbing 0.
        self.q = torch.full((self.runs, n_envs), 1.0 / n_envs, dtype=torch.float64)
        self.eta = self.per_run("eta", torch.float64)
        inverse_sqrt = torch.tensor([1.0 / math.sqrt(n) for n in (self.env_sizes or [1] * n_envs)],
                                    dtype=torch.float64)
        self.adjust = self.per_run("adjustment", torch.float64)[:, None] * inverse_sqrt  # (R, E)

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        losses = self.env_losses(self.env_logits(model, batches), batches)  # (E, R)
        self.update_weights(losses.detach())
        risk = (self.q.t().to(losses.dtype) * losses).sum(dim=0)
        logs = {f"q{e}": self.q[:, e] for e in range(self.n_envs)}
        return Objective(risk=risk, env_losses=losses, logs=logs)

    def update_weights(self, losses: torch.Tensor) -> None:
        """One exponentiated-gradient step on the simplex (Algorithm 1, line 6), every run
        with its own eta; ``losses`` is (E, R)."""
        q = self.q * torch.exp(self.eta[:, None] * (losses.t().to(self.q) + self.adjust))
        self.q = q / q.sum(dim=1, keepdim=True)

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        q = torch.as_tensor(state["q"], dtype=torch.float64)
        if q.shape != self.q.shape:
            raise ConfigError(f"groupdro: saved weights have shape {tuple(q.shape)}, expected {tuple(self.q.shape)}")
        self.q = q.to(self.q.device)

    def to(self, device: torch.device) -> "GroupDRO":
        super().to(device)
        self.q, self.eta, self.adjust = self.q.to(device), self.eta.to(device), self.adjust.to(device)
        return self
