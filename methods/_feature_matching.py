"""Matching the featurizer's distributions between pairs of environments (a helper module
shared by CORAL and MMD: not a method).

DomainBed's AbstractMMD (Gulrajani & Lopez-Paz 2021) trains

    (1/E) sum_e R_e  +  gamma * (1 / #pairs) sum_{i < j} D(phi(x_i), phi(x_j))

with phi the featurizer, R_e the loss of the classifier on phi(x_e) and D a discrepancy
between two samples of features (CORAL's moments, MMD's kernel estimate); with a single
training environment there is no pair and the penalty is 0. DomainBed calls gamma
``mmd_gamma`` for both methods; here it is ``penalty_weight``, as for every other penalised
method, so that one sweep can set it across methods. No anneal: the weight applies from the
first step (as in DomainBed).

A linear model's featurizer is the identity (invbench.models.Linear): phi(x) = x does not
depend on the parameters, the penalty is a constant, and its gradient is zero, so the
method trains exactly as ERM does, as DomainBed's code would with an identity featurizer
(only the logged loss differs, by gamma times the constant penalty). Use a model with a
featurizer (mlp, cnn) for these methods to do anything.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Sequence

import torch

from invbench.hparams import HParam, LogUniform
from invbench.method import Batch, Method, Objective
from invbench.packed import PackedModel

# DomainBed's mmd_gamma: default 1, search 10^U(-1, 1), for MMD and CORAL alike.
FEATURE_MATCHING_HPARAMS = {
    "penalty_weight": HParam(1.0, LogUniform(-1, 1), low=0.0, high=1e12,
                             help="weight gamma of the mean pairwise feature discrepancy (DomainBed's mmd_gamma)"),
}


class PairwiseFeatureMatching(Method):
    """Base of CORAL and MMD: mean risk + gamma * mean over environment pairs of a discrepancy.

    A subclass says what it keeps of one environment's features (``summary``, computed once
    per environment and step, whatever the number of pairs it enters) and how two summaries
    differ (``discrepancy``); both act on every run at once, the run dimension first.
    """

    hparams = FEATURE_MATCHING_HPARAMS

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        # float64: the configured weight exactly in the logs; the loss uses its own dtype
        self.penalty_weight = self.per_run("penalty_weight", torch.float64)

    def to(self, device: torch.device) -> "PairwiseFeatureMatching":
        super().to(device)
        self.penalty_weight = self.penalty_weight.to(device)
        return self

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        features = [model.features(x) for x, _ in batches]  # each (R, n_e, d)
        losses = self.env_losses([model.classify(z) for z in features], batches)  # (E, R)
        return Objective(risk=losses.mean(dim=0), penalty=self.penalty(features),
                         penalty_weight=self.penalty_weight, env_losses=losses)

    def penalty(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(R,): the mean discrepancy over the pairs i < j of environments (0 for one environment)."""
        summaries = [self.summary(z) for z in features]
        pairs = list(combinations(range(len(features)), 2))
        if not pairs:
            return features[0].new_zeros(features[0].shape[0])
        return torch.stack([self.discrepancy(summaries[i], summaries[j]) for i, j in pairs]).mean(dim=0)

    def summary(self, features: torch.Tensor) -> Any:
        """What ``discrepancy`` needs of one environment's features (R, n, d)."""
        raise NotImplementedError

    def discrepancy(self, a: Any, b: Any) -> torch.Tensor:
        """(R,): the discrepancy between two environments' summaries, per run."""
        raise NotImplementedError

