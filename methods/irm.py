"""IRMv1: invariant risk minimisation with the dummy-classifier gradient penalty."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import autograd

from invbench.errors import ConfigError
from invbench.hparams import HParam
from invbench.method import Batch, Objective
from invbench.packed import PackedModel
from invbench.registry import METHODS
from invbench.methods._penalty import (DOMAINBED_ANNEAL_SEARCH, DOMAINBED_WEIGHT_SEARCH, ScheduledPenaltyMethod,
                              schedule_hparams)


@METHODS.register("irm")
class IRM(ScheduledPenaltyMethod):
    """IRMv1: mean environment risk + w * mean over environments of ||d R_e(s * f) / d s at s=1||^2.

    Arjovsky, Bottou, Gulrajani & Lopez-Paz (2019), "Invariant Risk Minimization", eq. (IRMv1)
    and section 3.2. For each training environment e with logits f and labels y, a dummy scalar
    scale s = 1.0 multiplies the logits and g_e = d R_e(s * f) / d s (with create_graph, so the
    penalty is differentiated through). Objective per step:

        (1/E) sum_e R_e  +  w(step) * (1/E) sum_e P_e          [+ l2 * sum ||theta||^2, runner]

    with two estimators of P_e = ||g_e||^2:
      - "full_batch": g_e on the environment's whole batch, squared (the IRM code). Biased
        for minibatches: E[g^2] = (E g)^2 + Var g.
      - "unbiased": g_e^(1) * g_e^(2), the gradients on two disjoint halves of the batch, the
        even- and odd-indexed samples (the paper's section 3.2; DomainBed's IRM).
    w(step) = 1.0 before ``anneal_iters`` updates and ``penalty_weight`` after (not 0 before,
    as in both codes). ``scale_loss`` divides the whole loss by w when w > 1 (IRM code);
    ``reset_optimizer`` re-creates Adam at the anneal step (DomainBed). The trick is the same
    for every task: R_e is binary cross-entropy, cross-entropy or squared error of s * f.

    Defaults follow DomainBed (irm_lambda 100, anneal 500, unbiased, optimizer reset); the
    protocol "irm-paper" (invbench.paper_protocols) holds the IRM code's tuned Colored MNIST run.
    """

    hparams = {
        **schedule_hparams(weight=100.0, weight_search=DOMAINBED_WEIGHT_SEARCH, anneal=500,
                           anneal_search=DOMAINBED_ANNEAL_SEARCH, scale_loss=False, reset_optimizer=True,
                           what="IRMv1 penalty"),
        "estimator": HParam("unbiased", choices=("unbiased", "full_batch"),
                            help="squared gradient on the whole batch (IRM code) or product over two halves (paper 3.2, DomainBed)"),
    }
    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        self.estimator = self.hp["estimator"]

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        logits = self.env_logits(model, batches)
        losses = self.env_losses(logits, batches)  # (E, R)
        penalty = torch.stack([self.penalty(out, y) for out, (_, y) in zip(logits, batches)]).mean(dim=0)
        return self.scheduled(losses.mean(dim=0), penalty, step, losses)

    def penalty(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(R,): one environment's IRMv1 penalty of every run, with the configured estimator."""
        if self.estimator == "full_batch":
            return self._scale_gradient(logits, y).pow(2)
        if y.shape[1] < 2:
            raise ConfigError(
                f"irm: the unbiased estimator splits each environment's batch in two halves but a batch "
                f"has {y.shape[1]} example; use batch_size >= 2 (or 0 for full batch) or estimator=full_batch")
        return (self._scale_gradient(logits[:, 0::2], y[:, 0::2])
                * self._scale_gradient(logits[:, 1::2], y[:, 1::2]))

    def _scale_gradient(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(R,): d R(s * logits) / d s at s = 1 for each run, kept in the graph so the penalty
        can be minimised. One scale per run: the gradient of the sum over runs is each run's own."""
        scale = torch.ones(logits.shape[0], device=logits.device, dtype=logits.dtype, requires_grad=True)
        losses = self.task.run_losses(logits * scale.reshape(-1, *([1] * (logits.dim() - 1))), y)
        return autograd.grad(losses.sum(), [scale], create_graph=True)[0]
