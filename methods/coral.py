"""CORAL: match the means and covariances of the features between environments."""

from __future__ import annotations

import torch

from invbench.errors import ConfigError
from invbench.registry import METHODS
from invbench.methods._feature_matching import PairwiseFeatureMatching


@METHODS.register("coral")
class CORAL(PairwiseFeatureMatching):
    """CORAL: mean risk + gamma * mean over environment pairs of the feature mean and covariance gaps.

    Sun & Saenko (2016), "Deep CORAL: Correlation Alignment for Deep Domain Adaptation"
    (ECCV 2016 workshops), as DomainBed's CORAL (Gulrajani & Lopez-Paz 2021) applies it to
    domain generalisation: for every pair i < j of training environments, with phi the
    featurizer's outputs (n_e x d), mu_e their mean and C_e their unbiased covariance
    (divided by n_e - 1, as in both),

        D(i, j) = (1/d) ||mu_i - mu_j||^2 + (1/d^2) ||C_i - C_j||_F^2
        objective = (1/E) sum_e R_e + gamma * (2 / (E (E - 1))) sum_{i<j} D(i, j)   [+ l2, runner]

    DomainBed adds the mean term to the paper's loss and drops the paper's factor 1/4 on the
    covariance term; this is DomainBed's form. gamma (``penalty_weight``): DomainBed's
    mmd_gamma, default 1, search 10^U(-1, 1), no anneal. Each environment's batch needs at
    least two examples. With a linear model (identity featurizer) the penalty is a constant
    and the method trains exactly as ERM (invbench.methods._feature_matching).
    """

    def summary(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (R, 1, d), unbiased covariance (R, d, d)) of each run's features (R, n, d)."""
        n = features.shape[1]
        if n < 2:
            raise ConfigError(f"coral: an environment's batch has {n} example but a covariance needs at "
                              f"least 2; use batch_size >= 2 (or 0 for full batch)")
        mean = features.mean(dim=1, keepdim=True)
        centred = features - mean
        return mean, torch.bmm(centred.transpose(1, 2), centred) / (n - 1)

    def discrepancy(self, a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        (mean_a, cov_a), (mean_b, cov_b) = a, b
        return (mean_a - mean_b).pow(2).mean(dim=(1, 2)) + (cov_a - cov_b).pow(2).mean(dim=(1, 2))
