"""The penalty schedule shared by IRMv1, V-REx and MM-REx (a helper module: not a method).

Both the IRM code (Arjovsky et al. 2019) and the REx code (Krueger et al. 2021) weight the
penalty by 1.0 (not 0) for the first ``anneal_iters`` updates and by the configured
``penalty_weight`` from then on, and divide the whole loss by the weight when it exceeds 1
so that the gradients keep their scale when the weight jumps. DomainBed (Gulrajani &
Lopez-Paz 2021) uses the same weights but does not divide; it re-creates the Adam optimizer
at the anneal step instead, so that moment estimates gathered under the small weight do not
drive the first steps under the large one. Both remedies are options here.

The schedule is a pure function of the step, so a resumed run follows it exactly without
any saved state. Each run of a pack has its own weight and anneal step (per-run tensors).
IB-ERM and IB-IRM use the same schedule for their information bottleneck, with weight 0
before its own anneal step (invbench.methods._bottleneck).
"""

from __future__ import annotations

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


class PenaltySchedule:
    """The schedule of every run of a pack: weights, anneal steps and divisors per run."""

    def __init__(self, hp: Any, device: torch.device | None = None, *, weight: str = "penalty_weight",
                 anneal: str = "anneal_iters", before: float = 1.0, divides: bool = True):
        """``hp``: the method's RunHParams (scale_loss and reset_optimizer shared by the pack).
        ``weight`` and ``anneal`` name the hyperparameters; ``before`` is the weight before
        the anneal step (1.0 in the IRM and REx codes, 0 for the information bottleneck of
        Ahuja et al. 2021); ``divides=False``: this schedule never divides the loss (and
        does not read scale_loss)."""
        values = hp.values
        device = device or torch.device("cpu")
        # float64: the configured weight exactly (91257.18613115903 is logged as such); the
        # loss uses it in its own dtype (invbench.method.compose_loss)
        self.penalty_weight = torch.tensor([float(v) for v in values(weight)], dtype=torch.float64,
                                           device=device)
        self.anneal_iters = torch.tensor([int(v) for v in values(anneal)], device=device)
        self.before = float(before)
        self.scale_loss = divides and bool(hp["scale_loss"])
        self.reset_optimizer = bool(hp["reset_optimizer"])

    def to(self, device: torch.device) -> "PenaltySchedule":
        self.penalty_weight, self.anneal_iters = self.penalty_weight.to(device), self.anneal_iters.to(device)
        return self

    def weight(self, step: int) -> torch.Tensor:
        """(R,): ``before`` (1.0: the codes' "not 0") before a run's anneal_iters updates, its weight after."""
        return torch.where(self.anneal_iters <= step, self.penalty_weight,
                           torch.full_like(self.penalty_weight, self.before))

    def divide_by(self, step: int) -> torch.Tensor:
        """(R,): what each run's whole loss is divided by: its weight when scale_loss and it exceeds 1."""
        weight = self.weight(step)
        if not self.scale_loss:
            return torch.ones_like(weight)
        return torch.where(weight > 1.0, weight, torch.ones_like(weight))

    def reset_mask(self, step: int) -> torch.Tensor | None:
        """(R,) bool: the runs that re-create their optimizer at this step (DomainBed), or
        None when the pack does not reset."""
        return (self.anneal_iters == step) if self.reset_optimizer else None


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
        self.schedule = PenaltySchedule(self.hp)

    def to(self, device: torch.device) -> "ScheduledPenaltyMethod":
        super().to(device)
        self.schedule.to(device)
        return self

    def scheduled(self, risk: torch.Tensor, penalty: torch.Tensor, step: int, env_losses: torch.Tensor,
                  logs: dict[str, torch.Tensor] | None = None) -> Objective:
        """The step's objective with the schedule's per-run weights and divisors."""
        return Objective(risk=risk, penalty=penalty, penalty_weight=self.schedule.weight(step),
                         divide_by=self.schedule.divide_by(step), env_losses=env_losses, logs=logs or {})

    def optimizer_reset_mask(self, step: int) -> torch.Tensor | None:
        return self.schedule.reset_mask(step)
