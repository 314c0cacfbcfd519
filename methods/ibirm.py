"""IB-IRM: IRMv1 plus the variance of the representation (an information bottleneck)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from invbench.hparams import HParam
from invbench.method import Batch, Objective, StepResult, compose_loss
from invbench.methods._bottleneck import (BOTTLENECK_HPARAMS, Bottleneck, bottleneck_schedule,
                                          check_bottleneck_schedule)
from invbench.methods.irm import FORM_HPARAMS, IRM
from invbench.packed import PackedModel
from invbench.registry import METHODS


@METHODS.register("ibirm")
class IBIRM(IRM):
    """IB-IRM: IRMv1 + w_ib * mean over environments of the variance of the features.

    Ahuja, Caballero, Zhang, Gagnon-Audet, Bengio, Mitliagkas & Rish (2021), "Invariance
    Principle Meets Information Bottleneck for Out-of-Distribution Generalization", NeurIPS,
    the IB-IRM objective. Per step, with R_e the mean loss of environment e's batch, P_e its
    IRMv1 penalty (invbench.methods.irm, either estimator) and phi the penalised representation:

        [ (1/E) sum_e R_e + w(step) * (1/E) sum_e P_e
          + w_ib(step) * (1/E) sum_e (1/d) sum_k Var_batch_e(phi_k) ] / divide_by   [+ l2 term, runner]

    Two schedules, per run: w = 1.0 before ``anneal_iters`` updates and ``penalty_weight``
    after (IRMv1's); w_ib = 0 before ``ib_anneal_iters`` and ``ib_weight`` after.
    ``reset_optimizer`` re-creates Adam at either anneal step (DomainBed's IB_IRM);
    ``scale_loss`` divides the whole loss, the bottleneck term included, by w when w > 1 (the
    authors' IRM-code Colored MNIST). Var is the unbiased variance over the batch. phi
    (``bottleneck``): the featurizer's output (DomainBed; a linear model's featurizer is the
    identity, so use the MLP or bottleneck=logits there) or the model's outputs (the
    authors' linear unit tests code, where Phi is the whole linear model).

    The IRMv1 part is ``irm``'s own code and hyperparameters (the same names, less irm's
    choices of the linear unit tests' form: IB-IRM keeps the weighted form). Defaults and
    searches: DomainBed's IB_IRM (irm_lambda 1e2 and ib_lambda 1e2, both 10^U(-1, 5); both
    anneals 500, int 10^U(0, 4); the unbiased estimator; Adam re-created, no division).
    """

    hparams = {
        **{name: hp for name, hp in IRM.hparams.items() if name not in FORM_HPARAMS},
        **BOTTLENECK_HPARAMS,
        "reset_optimizer": HParam(True, help="re-create the optimizer at either anneal step (DomainBed)"),
    }

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any], steps: int) -> list[str]:
        return super().check_hparams(hparams, steps) + check_bottleneck_schedule(hparams, steps)

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        self.bottleneck = Bottleneck(self.name, self.hp["bottleneck"])
        self.ib_schedule = bottleneck_schedule(self.hp)

    def to(self, device: torch.device) -> "IBIRM":
        super().to(device)
        self.ib_schedule.to(device)
        return self

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        """IRMv1's objective; the bottleneck's penalty and weight ride along in the logs
        ("ib_penalty", "ib_weight") and ``update`` adds them to the loss."""
        logits, representations = self.bottleneck.outputs(model, batches)
        losses = self.env_losses(logits, batches)  # (E, R)
        penalty = torch.stack([self.penalty(out, y) for out, (_, y) in zip(logits, batches)]).mean(dim=0)
        logs = {"ib_penalty": self.bottleneck.penalty(representations), "ib_weight": self.ib_schedule.weight(step)}
        return self.scheduled(losses.mean(dim=0), penalty, step, losses, logs)

    def update(self, model: PackedModel, batches: Sequence[Batch], step: int, optimizer: Any, l2: torch.Tensor,
               active: torch.Tensor) -> StepResult:
        objective = self.objective(model, batches, step)
        loss = compose_loss(objective, model, l2)
        ib_penalty, ib_weight = objective.logs["ib_penalty"], objective.logs["ib_weight"]
        loss = loss + ib_weight.to(loss.dtype) * ib_penalty / objective.divide_by.to(loss.dtype)
        return self.apply(loss, objective, step, optimizer, active)

    def optimizer_reset_mask(self, step: int) -> torch.Tensor | None:
        irm, ib = self.schedule.reset_mask(step), self.ib_schedule.reset_mask(step)
        return None if irm is None else irm | ib
