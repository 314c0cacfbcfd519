"""Empirical risk minimisation over the pooled training environments."""

from __future__ import annotations

from typing import Sequence

from invbench.method import Batch, Method, Objective
from invbench.packed import PackedModel
from invbench.registry import METHODS


@METHODS.register("erm")
class ERM(Method):
    """ERM: minimise the mean over training environments of each environment's mean loss.

    Vapnik (1992), "Principles of risk minimization for learning theory". Objective:
    (1/E) * sum_e R_e(theta), R_e the mean loss on environment e's batch. With equal
    environment sizes and full batches this equals the pooled mean loss, as in the IRM code.
    The IRM paper's tuned values are the protocols "irm-paper" and "irm-paper-grayscale" (its
    colour-blind oracle).
    """

    exact_on_sufficient_statistics = True  # only each environment's mean loss

    hparams = {}

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        losses = self.env_losses(self.env_logits(model, batches), batches)  # (E, R)
        return Objective(risk=losses.mean(dim=0), env_losses=losses)
