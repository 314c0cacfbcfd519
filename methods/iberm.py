"""IB-ERM: ERM plus the variance of the representation (an information bottleneck)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from invbench.hparams import HParam
from invbench.method import Batch, Method, Objective
from invbench.methods._bottleneck import (BOTTLENECK_HPARAMS, Bottleneck, bottleneck_schedule,
                                          check_bottleneck_schedule)
from invbench.packed import PackedModel
from invbench.registry import METHODS


@METHODS.register("iberm")
class IBERM(Method):
    """IB-ERM: mean environment risk + w_ib * mean over environments of the variance of the features.

    Ahuja, Caballero, Zhang, Gagnon-Audet, Bengio, Mitliagkas & Rish (2021), "Invariance
    Principle Meets Information Bottleneck for Out-of-Distribution Generalization", NeurIPS,
    the IB-ERM objective. Per step, with R_e the mean loss of environment e's batch and phi
    the penalised representation:

        (1/E) sum_e R_e  +  w_ib(step) * (1/E) sum_e (1/d) sum_k Var_batch_e(phi_k)   [+ l2 term, runner]

    Var is the unbiased variance over the batch (torch's ``var``, as both codes). w_ib(step)
    = 0 before ``ib_anneal_iters`` updates and ``ib_weight`` after; ``reset_optimizer``
    re-creates Adam at that step. phi (``bottleneck``): the featurizer's output (DomainBed's
    IB_ERM; a linear model's featurizer is the identity, so use the MLP or bottleneck=logits
    there) or the model's outputs (the authors' linear unit tests code). That code pools the
    environments into one variance for IB-ERM; here the variance is per environment, as
    DomainBed's IB_ERM and both codes' IB-IRM.

    Defaults and searches: DomainBed (ib_lambda 1e2 in 10^U(-1, 5), ib_penalty_anneal_iters
    500 in int 10^U(0, 4), Adam re-created at the anneal step).
    """

    hparams = {
        **BOTTLENECK_HPARAMS,
        "reset_optimizer": HParam(True, help="re-create the optimizer at the ib_anneal_iters step (DomainBed)"),
    }

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any], steps: int) -> list[str]:
        return check_bottleneck_schedule(hparams, steps)

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        self.bottleneck = Bottleneck(self.name, self.hp["bottleneck"])
        self.ib_schedule = bottleneck_schedule(self.hp)

    def to(self, device: torch.device) -> "IBERM":
        super().to(device)
        self.ib_schedule.to(device)
        return self

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        logits, representations = self.bottleneck.outputs(model, batches)
        losses = self.env_losses(logits, batches)  # (E, R)
        return Objective(risk=losses.mean(dim=0), penalty=self.bottleneck.penalty(representations),
                         penalty_weight=self.ib_schedule.weight(step), env_losses=losses)

    def optimizer_reset_mask(self, step: int) -> torch.Tensor | None:
        return self.ib_schedule.reset_mask(step)
