"""MM-REx: minimax risk extrapolation over an extended simplex of environment weights."""

from __future__ import annotations

from typing import Sequence

from invbench.method import Batch, Objective
from invbench.packed import PackedModel
from invbench.registry import METHODS
from invbench.methods._penalty import (DOMAINBED_ANNEAL_SEARCH, DOMAINBED_WEIGHT_SEARCH, ScheduledPenaltyMethod,
                              schedule_hparams)


@METHODS.register("mmrex")
class MMREx(ScheduledPenaltyMethod):
    """MM-REx: mean risk + w * (max_e R_e - mean risk), i.e. (1 - E lambda_min) max_e R_e + lambda_min sum_e R_e.

    Krueger et al. (2021), "Out-of-Distribution Generalization via Risk Extrapolation (REx)",
    eq. (MM-REx): R(theta) = max over weights lambda with sum 1 and every lambda_e >= lambda_min
    of sum_e lambda_e R_e = (1 - E * lambda_min) * max_e R_e + lambda_min * sum_e R_e, E the
    number of training environments; lambda_min < 0 extrapolates beyond the convex hull.

    Since lambda_min * sum_e R_e = E * lambda_min * mean R, the same objective reads

        mean R + w * (max_e R_e - mean R),    w = 1 - E * lambda_min  (lambda_min = (1 - w) / E)

    which makes it a penalised risk that the IRM/REx anneal schedule applies to: w = 1.0
    (lambda_min = 0, the worst-case risk of group DRO) before ``anneal_iters`` updates and
    ``penalty_weight`` after; w = 0 is ERM, 0 < w < 1 interpolates (robust optimisation) and
    w > 1 extrapolates. ``scale_loss`` and ``reset_optimizer`` as for IRMv1 and V-REx. A
    registered method of its own (not a V-REx option) because its penalty differs.
    """

    exact_on_sufficient_statistics = True  # only each environment's mean loss

    hparams = schedule_hparams(weight=10.0, weight_search=DOMAINBED_WEIGHT_SEARCH, anneal=500,
                               anneal_search=DOMAINBED_ANNEAL_SEARCH, scale_loss=False, reset_optimizer=True,
                               what="excess worst-case risk max_e R_e - mean R (w = 1 - E * lambda_min)")

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        losses = self.env_losses(self.env_logits(model, batches), batches)  # (E, R)
        mean = losses.mean(dim=0)
        weight = self.schedule.weight(step)
        return self.scheduled(mean, losses.max(dim=0).values - mean, step, losses,
                              logs={"lambda_min": (1.0 - weight) / self.n_envs})
