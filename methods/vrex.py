"""V-REx: risk extrapolation through the variance of the environments' risks."""

from __future__ import annotations

from typing import Sequence

from invbench.hparams import HParam
from invbench.method import Batch, Objective
from invbench.packed import PackedModel
from invbench.registry import METHODS
from invbench.methods._penalty import (DOMAINBED_ANNEAL_SEARCH, DOMAINBED_WEIGHT_SEARCH, ScheduledPenaltyMethod,
                              schedule_hparams)


@METHODS.register("vrex")
class VREx(ScheduledPenaltyMethod):
    """V-REx: mean (or sum) of environment risks + w * population variance of the risks.

    Krueger et al. (2021), "Out-of-Distribution Generalization via Risk Extrapolation (REx)",
    eq. (V-REx): R(theta) = sum_e R_e + beta * Var({R_1, ..., R_E}). Here

        risk_reduction(R_1..R_E) + w(step) * (1/E) sum_e (R_e - mean R)^2   [+ l2 term, runner]

    with the population variance (divide by E, not E - 1). Two conventions exist:
      - the REx Colored MNIST code: risk = R_1 + R_2 (risk_reduction="sum") and penalty
        (R_1 - R_2)^2, which for two environments equals 4 x the population variance, so
        penalty_weight = 4 * beta reproduces its beta after the anneal step; it anneals and
        divides by the weight as the IRM code does (scale_loss=true). Not exactly before the
        anneal step: there the REx code weighs (R_1 - R_2)^2 by 1 (= 4 x variance), this
        schedule weighs the variance by 1, and it divides by 4 * beta where the code
        divides by beta (a constant factor, which Adam all but ignores);
      - DomainBed's VREx: mean(R_e) + lambda * mean((R_e - mean R)^2) (risk_reduction="mean"),
        weight 1 before anneal, optimizer re-created at the anneal step. These are the defaults.
    w(step) = 1.0 before ``anneal_iters`` updates and ``penalty_weight`` after. The protocol
    "irm-paper" applies the IRM paper's tuned Colored MNIST values to V-REx, as the Fishr paper
    (Rame et al. 2022) re-ran it (mean risk, variance penalty, divide by the weight).
    """

    exact_on_sufficient_statistics = True  # only each environment's mean loss

    hparams = {
        **schedule_hparams(weight=10.0, weight_search=DOMAINBED_WEIGHT_SEARCH, anneal=500,
                           anneal_search=DOMAINBED_ANNEAL_SEARCH, scale_loss=False, reset_optimizer=True,
                           what="variance of the environment risks"),
        "risk_reduction": HParam("mean", choices=("mean", "sum"),
                                 help="mean of the environment risks (DomainBed) or their sum (REx code)"),
    }
    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        losses = self.env_losses(self.env_logits(model, batches), batches)  # (E, R)
        mean = losses.mean(dim=0)
        risk = losses.sum(dim=0) if self.hp["risk_reduction"] == "sum" else mean
        # Population variance: torch's var() would divide by E - 1.
        penalty = (losses - mean).pow(2).mean(dim=0)
        return self.scheduled(risk, penalty, step, losses)
