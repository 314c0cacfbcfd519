"""The penalty schedule shared by IRMv1, V-REx and MM-REx (a helper module: not a method).

Both the IRM code (Arjovsky et al. 2019) and the REx code (Krueger et al. 2021) weight the
penalty by 1.0 (not 0) for the first ``anneal_iters`` updates and by the configured
``penalty_weight`` from then on, and divide the whole loss by the weight when it exceeds 1
so that the gradients keep their scale when the weight jumps. DomainBed (Gulrajani &
Lopez-Paz 2021) uses the same weights but does not divide; it re-creates the Adam optimizer
at the anneal step instead, so that moment estimates gathered under the small weight do not
drive the first steps under the large one. Both remedies are options here.

The schedule is a pure function of the step, so a resumed run follows it exactly without
any saved state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from invbench.hparams import HParam, LogUniform
from invbench.method import Method, Objective


def schedule_hparams(*, weight: float, weight_search: Any, anneal: int, anneal_search: Any,
                     scale_loss: bool, reset_optimizer: bool, what: str) -> dict[str, HParam]:
    """The four schedule hyperparameters, with the defaults and searches a method chooses."""
    return {
        "penalty_weight": HParam(weight, weight_search, low=0.0, high=1e12,
                                 help=f"weight of the {what} from anneal_iters on (1.0 before)"),
        "anneal_iters": HParam(anneal, anneal_search, low=0, high=10**9,
                               help="updates with penalty weight 1.0 before the configured weight applies"),
        "scale_loss": HParam(scale_loss, help="divide the whole loss by the weight when it exceeds 1 (IRM/REx code)"),
        "reset_optimizer": HParam(reset_optimizer, help="re-create the optimizer at the anneal step (DomainBed)"),
    }


# DomainBed's search ranges for the penalty weight and the anneal length (irm_lambda,
# vrex_lambda: 10^U(-1, 5); *_penalty_anneal_iters: int(10^U(0, 4))).
DOMAINBED_WEIGHT_SEARCH = LogUniform(-1, 5)
DOMAINBED_ANNEAL_SEARCH = LogUniform(0, 4, integer=True)


@dataclass(frozen=True)
class PenaltySchedule:
    penalty_weight: float
    anneal_iters: int
    scale_loss: bool
    reset_optimizer: bool

    @classmethod
    def from_hparams(cls, hp: Mapping[str, Any]) -> "PenaltySchedule":
        return cls(float(hp["penalty_weight"]), int(hp["anneal_iters"]), bool(hp["scale_loss"]),
                   bool(hp["reset_optimizer"]))

    def weight(self, step: int) -> float:
        """1.0 before anneal_iters updates (the codes' "not 0"), the configured weight after."""
        return self.penalty_weight if step >= self.anneal_iters else 1.0

    def divide_by(self, step: int) -> float:
        """What the whole loss is divided by: the weight when scale_loss and it exceeds 1."""
        weight = self.weight(step)
        return weight if self.scale_loss and weight > 1.0 else 1.0

    def reset_step(self) -> int | None:
        """The step at which the runner re-creates the optimizer (DomainBed), or None."""
        return self.anneal_iters if self.reset_optimizer else None


def check_schedule(hparams: Mapping[str, Any], steps: int) -> list[str]:
    """A penalty weight that never applies is almost always a mistake: say so."""
    if hparams["anneal_iters"] >= steps and hparams["penalty_weight"] != 1.0:
        return [f"anneal_iters={hparams['anneal_iters']} >= steps={steps}: the penalty weight stays 1.0 "
                f"for the whole run and penalty_weight={hparams['penalty_weight']:g} never applies; "
                "lower anneal_iters or raise steps"]
    return []


class ScheduledPenaltyMethod(Method):
    """Base of the methods whose penalty follows the schedule above (IRMv1, V-REx, MM-REx)."""

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any], steps: int) -> list[str]:
        return check_schedule(hparams, steps)

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        self.schedule = PenaltySchedule.from_hparams(self.hp)

    def scheduled(self, risk: torch.Tensor, penalty: torch.Tensor, step: int, env_losses: torch.Tensor,
                  logs: dict[str, float] | None = None) -> Objective:
        """The step's objective with the schedule's weight and divisor."""
        return Objective(risk=risk, penalty=penalty, penalty_weight=self.schedule.weight(step),
                         divide_by=self.schedule.divide_by(step), env_losses=env_losses, logs=logs or {})

    def optimizer_reset_step(self) -> int | None:
        return self.schedule.reset_step()
