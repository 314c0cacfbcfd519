"""IRMv1: invariant risk minimisation with the dummy-classifier gradient penalty."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import autograd

from invbench.errors import ConfigError
from invbench.hparams import HParam
from invbench.method import Batch, Objective
from invbench.packed import PackedModel
from invbench.registry import METHODS
from invbench.methods._penalty import (DOMAINBED_ANNEAL_SEARCH, DOMAINBED_WEIGHT_SEARCH, ScheduledPenaltyMethod,
                              check_schedule, schedule_hparams)

WEIGHTED, INTERPOLATED = "weighted", "interpolated"
# The choices that express the linear unit tests' IRMv1; only irm reads them (IB-IRM, built on
# irm's penalty, keeps DomainBed's form), and a method without them gets their defaults.
FORM_HPARAMS = ("form", "irm_lambda", "dummies", "penalty_reduction")


@METHODS.register("irm")
class IRM(ScheduledPenaltyMethod):
    """IRMv1: mean environment risk + w * mean over environments of ||d R_e(s * f) / d s at s=1||^2.

    Arjovsky, Bottou, Gulrajani & Lopez-Paz (2019), "Invariant Risk Minimization", eq. (IRMv1)
    and section 3.2. For each training environment e with logits f and labels y, a dummy scalar
    scale s = 1.0 multiplies the logits and g_e = d R_e(s * f) / d s (with create_graph, so the
    penalty is differentiated through). Objective per step (form="weighted", the default):

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

    The linear unit tests' code (Aubin et al. 2021) runs IRMv1 otherwise, and three choices
    express it (protocol "linear-unit-tests"):
      - form="interpolated": (1 - irm_lambda) * (1/E) sum_e R_e + irm_lambda * penalty, with
        no schedule (the schedule's four hyperparameters are then unused);
      - dummies="scale_and_shift": the logits become s * f + b, and P_e adds the squared
        gradient with respect to the shift b at 0 to that of the scale;
      - penalty_reduction="sum": the environments' penalties are summed, not averaged.

    Defaults follow DomainBed (its irm_lambda 100 is penalty_weight here, anneal 500, unbiased,
    optimizer reset); the protocol "irm-paper" (invbench.paper_protocols) holds the IRM code's
    tuned Colored MNIST run.
    """

    hparams = {
        **schedule_hparams(weight=100.0, weight_search=DOMAINBED_WEIGHT_SEARCH, anneal=500,
                           anneal_search=DOMAINBED_ANNEAL_SEARCH, scale_loss=False, reset_optimizer=True,
                           what="IRMv1 penalty"),
        "estimator": HParam("unbiased", choices=("unbiased", "full_batch"),
                            help="squared gradient on the whole batch (IRM code) or product over two halves (paper 3.2, DomainBed)"),
        "form": HParam(WEIGHTED, choices=(WEIGHTED, INTERPOLATED),
                       help="risk + w(step) * penalty with the schedule (IRM code, DomainBed) or (1 - irm_lambda) * "
                            "risk + irm_lambda * penalty without one (linear unit tests' code)"),
        # searched only where a protocol says so: in the weighted form it is unused
        "irm_lambda": HParam(0.9, low=0.0, high=1.0,
                             help="form=interpolated: the penalty's share of the objective (unit tests' code: 0.9, "
                                  "searched 1 - 10^U(-3, -0.3))"),
        "dummies": HParam("scale", choices=("scale", "scale_and_shift"),
                          help="the dummies whose squared gradients make the penalty: a scale s of the logits (IRM "
                               "code, DomainBed) or s and a shift b, s * f + b (linear unit tests' code)"),
        "penalty_reduction": HParam("mean", choices=("mean", "sum"),
                                    help="mean (IRM code, DomainBed) or sum (linear unit tests' code) of the "
                                         "environments' penalties"),
    }

    exact_on_sufficient_statistics = True  # with the full-batch estimator (below)

    @classmethod
    def sufficient_statistics_problem(cls, hparams: Mapping[str, Any]) -> str | None:
        # the full batch's squared gradient is a function of each environment's mean loss;
        # the unbiased estimator's halves are not
        if hparams.get("estimator") == "full_batch":
            return None
        return ("with estimator=unbiased multiplies the gradients of two halves of each batch, which sufficient "
                "statistics do not have; use estimator=full_batch")

    @classmethod
    def shifts_outputs(cls, hparams: Mapping[str, Any]) -> bool:
        return hparams.get("dummies", "scale") == "scale_and_shift"

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any], steps: int) -> list[str]:
        # the interpolated form has no schedule: its anneal step means nothing
        return check_schedule(hparams, steps) if hparams.get("form", WEIGHTED) == WEIGHTED else []

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        self.estimator = self.hp["estimator"]
        self.form = self.hp.get("form", WEIGHTED)
        self.shift = self.hp.get("dummies", "scale") == "scale_and_shift"
        self.penalty_reduction = self.hp.get("penalty_reduction", "mean")

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        logits = self.env_logits(model, batches)
        losses = self.env_losses(logits, batches)  # (E, R)
        penalties = torch.stack([self.penalty(out, y) for out, (_, y) in zip(logits, batches)])
        penalty = penalties.sum(dim=0) if self.penalty_reduction == "sum" else penalties.mean(dim=0)
        if self.form == WEIGHTED:
            return self.scheduled(losses.mean(dim=0), penalty, step, losses)
        # (1 - lambda) * risk + lambda * penalty: lambda in float64 as the code's Python float,
        # each factor used in the loss's dtype
        weight = self.per_run("irm_lambda", dtype=torch.float64)
        risk = (1.0 - weight).to(losses.dtype) * losses.mean(dim=0)
        return Objective(risk=risk, penalty=penalty, penalty_weight=weight, env_losses=losses)

    def optimizer_reset_mask(self, step: int) -> torch.Tensor | None:
        return super().optimizer_reset_mask(step) if self.form == WEIGHTED else None

    def penalty(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(R,): one environment's IRMv1 penalty of every run, with the configured estimator:
        the sum over the dummies of the squared gradient (or the product of the halves')."""
        if self.estimator == "full_batch":
            terms = [g.pow(2) for g in self._dummy_gradients(logits, y)]
        else:
            if y.shape[1] < 2:
                raise ConfigError(
                    f"irm: the unbiased estimator splits each environment's batch in two halves but a batch "
                    f"has {y.shape[1]} example; use batch_size >= 2 (or 0 for full batch) or estimator=full_batch")
            halves = zip(self._dummy_gradients(logits[:, 0::2], y[:, 0::2]),
                         self._dummy_gradients(logits[:, 1::2], y[:, 1::2]))
            terms = [even * odd for even, odd in halves]
        penalty = terms[0]  # with the scale alone: exactly its own term, as before the shift existed
        for term in terms[1:]:
            penalty = penalty + term
        return penalty

    def _dummy_gradients(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """d R(s * logits [+ b]) / d s at s = 1 (and / d b at b = 0), each (R,), kept in the
        graph so the penalty can be minimised. One scale (and shift) per run: the gradient of
        the sum over runs is each run's own. The dummies are not parameters: never trained."""
        runs, broadcast = logits.shape[0], (-1, *([1] * (logits.dim() - 1)))
        scale = torch.ones(runs, device=logits.device, dtype=logits.dtype, requires_grad=True)
        if not self.shift:
            losses = self.task.run_losses(logits * scale.reshape(broadcast), y)
            return autograd.grad(losses.sum(), [scale], create_graph=True)
        shift = torch.zeros(runs, device=logits.device, dtype=logits.dtype, requires_grad=True)
        losses = self.task.run_losses(logits * scale.reshape(broadcast) + shift.reshape(broadcast), y)
        return autograd.grad(losses.sum(), [scale, shift], create_graph=True)
