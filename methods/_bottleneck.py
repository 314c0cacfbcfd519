"""The information-bottleneck penalty of IB-ERM and IB-IRM (a helper module: not a method).

Ahuja et al. (2021) penalise the entropy of the representation; for the Gaussian case and
in their code that is its variance: for each training environment e, the variance over the
environment's batch of each coordinate of the representation, averaged over coordinates,
then averaged over environments:

    P_IB = (1/E) sum_e (1/d) sum_k Var_{i in batch e}(phi_k(x_i))      (unbiased: n_e - 1)

What phi is (``bottleneck``):
  - "features": the featurizer's output (``model.features``), as DomainBed's IB_ERM and
    IB_IRM. A linear model's featurizer is the identity, so there the penalty is a
    constant of the data and the method is ERM / IRMv1;
  - "logits": the model's outputs, as the authors' linear unit tests code (where Phi is the
    whole linear model).

The weight follows its own schedule, per run: 0 before ``ib_anneal_iters`` updates and
``ib_weight`` from then on (DomainBed, and the authors' Colored MNIST code), the optimizer
re-created at that step when ``reset_optimizer`` is set (DomainBed).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import torch

from invbench.errors import ConfigError
from invbench.hparams import HParam
from invbench.methods._penalty import DOMAINBED_ANNEAL_SEARCH, DOMAINBED_WEIGHT_SEARCH, PenaltySchedule

BOTTLENECKS = ("features", "logits")

# DomainBed's ib_lambda (1e2, 10^U(-1, 5)) and ib_penalty_anneal_iters (500, int 10^U(0, 4)).
BOTTLENECK_HPARAMS: dict[str, HParam] = {
    "ib_weight": HParam(100.0, DOMAINBED_WEIGHT_SEARCH, low=0.0, high=1e12,
                        help="weight of the variance of the representation from ib_anneal_iters on (0 before)"),
    "ib_anneal_iters": HParam(500, DOMAINBED_ANNEAL_SEARCH, low=0, high=10**9,
                              help="updates without the information-bottleneck penalty before ib_weight applies"),
    "bottleneck": HParam("features", choices=BOTTLENECKS,
                         help="whose variance is penalised: the featurizer's output (DomainBed) or the model's "
                              "outputs (the authors' linear unit tests; a linear model's features are its inputs)"),
}


def bottleneck_schedule(hp: Any) -> PenaltySchedule:
    """Every run's IB weight: 0 before its ib_anneal_iters, ib_weight after; never divides."""
    return PenaltySchedule(hp, weight="ib_weight", anneal="ib_anneal_iters", before=0.0, divides=False)


def check_bottleneck_schedule(hparams: Mapping[str, Any], steps: int) -> list[str]:
    """A bottleneck weight that never applies is almost always a mistake: say so."""
    if hparams["ib_anneal_iters"] >= steps and hparams["ib_weight"] != 0.0:
        return [f"ib_anneal_iters={hparams['ib_anneal_iters']} >= steps={steps}: the information-bottleneck "
                f"penalty stays off for the whole run and ib_weight={hparams['ib_weight']:g} never applies; "
                "lower ib_anneal_iters or raise steps"]
    return []


class Bottleneck:
    """The outputs and the penalised representation of every environment's batch."""

    def __init__(self, method: str, bottleneck: str):
        self.method, self.bottleneck = method, bottleneck
        self.warned = False

    def outputs(self, model: Any, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(logits, representations): one (R, n_e, out) and one (R, n_e, d) per environment.
        With "features" the logits are the classifier on the same features (one featurizer pass)."""
        for _, y in batches:
            if y.shape[1] < 2:
                raise ConfigError(f"{self.method}: the information bottleneck is a variance over each environment's "
                                  f"batch but a batch has {y.shape[1]} example; use batch_size >= 2 (or 0 for full "
                                  "batch)")
        if self.bottleneck == "logits":
            logits = [model(x) for x, _ in batches]
            return logits, logits
        features = [model.features(x) for x, _ in batches]
        if not self.warned and not features[0].requires_grad:
            self.warned = True
            warnings.warn(f"{self.method}: bottleneck=features on a model whose featurizer has no parameters (a "
                          "linear model's features are its inputs): the information-bottleneck penalty is a "
                          "constant; use bottleneck=logits to penalise the variance of the outputs")
        return [model.classify(z) for z in features], features

    @staticmethod
    def penalty(representations: Sequence[torch.Tensor]) -> torch.Tensor:
        """(R,): mean over environments of the mean over coordinates of the unbiased
        variance over the environment's batch."""
        return torch.stack([z.var(dim=1).mean(dim=-1) for z in representations]).mean(dim=0)
