"""Spectral decoupling: ERM plus an l2 penalty on the logits."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from invbench.errors import ConfigError
from invbench.hparams import HParam, LogUniform
from invbench.method import Batch, Method, Objective
from invbench.packed import PackedModel
from invbench.registry import METHODS


@METHODS.register("sd")
class SpectralDecoupling(Method):
    """SD: mean environment risk + sd_reg * mean over all training logits of logit^2.

    Pezeshki, Kaba, Bengio, Courville, Precup & Lajoie (2021), "Gradient Starvation: A
    Learning Proclivity in Neural Networks", NeurIPS, eq. (25) (spectral decoupling: the
    cross-entropy plus (lambda / 2) ||y_hat||^2). As DomainBed's SD, per step:

        (1/E) sum_e R_e  +  sd_reg * mean of f^2 over every output of every example of
                                     every training environment's batch, pooled   [+ l2 term, runner]

    (pooled: an environment weighs by its batch size, as DomainBed's (all_logits ** 2).mean();
    the risk is the mean of the environments' mean losses, as invbench's ERM: with equal batch
    sizes both are DomainBed's pooled means). SD needs no environment labels.

    ``sd_anneal_iters`` >= 0 gives the authors' Colored MNIST code instead: that weight
    before the step, and from it on the loss sd_reg * (risk + penalty), i.e. penalty weight
    1 and the whole loss (l2 term included) multiplied by sd_reg, the optimizer kept. -1 (the
    default): sd_reg throughout, as DomainBed.

    Default and search: DomainBed (sd_reg 0.1 in 10^U(-5, -1)). The authors' Colored MNIST
    run (their table 1): hidden_dim 300, lr 1e-4, l2 0, full batch, 2001 steps, sd_reg 2e-5,
    sd_anneal_iters 450.
    """

    hparams = {
        "sd_reg": HParam(0.1, LogUniform(-5, -1), low=0.0, high=1e6,
                         help="weight of the mean squared logit"),
        "sd_anneal_iters": HParam(-1, low=-1, high=10**9,
                                  help="from this step on the loss is sd_reg * (risk + penalty), as the authors' "
                                       "Colored MNIST code; -1: never (DomainBed)"),
    }

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any], steps: int) -> list[str]:
        if hparams["sd_anneal_iters"] >= steps:
            return [f"sd_anneal_iters={hparams['sd_anneal_iters']} >= steps={steps}: the switch to "
                    "sd_reg * (risk + penalty) never happens; use -1 for DomainBed's form or lower it"]
        return []

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        # float64, as the other methods' weights: logged exactly, used in the loss's dtype
        self.sd_reg = self.per_run("sd_reg", torch.float64)
        self.anneal_iters = self.per_run("sd_anneal_iters", torch.int64)
        if bool(((self.anneal_iters >= 0) & (self.sd_reg == 0)).any()):
            raise ConfigError("sd: sd_anneal_iters >= 0 multiplies the loss by sd_reg from that step on, which "
                              "needs sd_reg > 0 (or sd_anneal_iters = -1)")

    def to(self, device: torch.device) -> "SpectralDecoupling":
        super().to(device)
        self.sd_reg, self.anneal_iters = self.sd_reg.to(device), self.anneal_iters.to(device)
        return self

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        logits = self.env_logits(model, batches)
        losses = self.env_losses(logits, batches)  # (E, R)
        # each run's mean over its own contiguous (examples x outputs) block, all environments pooled
        penalty = torch.cat(logits, dim=1).pow(2).mean(dim=(1, 2))
        switched = (self.anneal_iters >= 0) & (self.anneal_iters <= step)
        weight = torch.where(switched, torch.ones_like(self.sd_reg), self.sd_reg)
        divide_by = torch.where(switched, 1.0 / self.sd_reg, torch.ones_like(self.sd_reg))
        return Objective(risk=losses.mean(dim=0), penalty=penalty, penalty_weight=weight, divide_by=divide_by,
                         env_losses=losses)
