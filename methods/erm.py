"""Empirical risk minimisation over the pooled training environments."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from invbench.method import Batch, Method, Objective
from invbench.registry import METHODS


@METHODS.register("erm")
class ERM(Method):
    """ERM: minimise the mean over training environments of each environment's mean loss.

    Vapnik (1992), "Principles of risk minimization for learning theory". Objective:
    (1/E) * sum_e R_e(theta), R_e the mean loss on environment e's batch. With equal
    environment sizes and full batches this equals the pooled mean loss, as in the IRM code.
    Presets: "irm-paper" (the IRM paper's tuned Colored MNIST ERM) and "irm-paper-grayscale"
    (its colour-blind oracle; use it with model "mlp_grayscale").
    """

    hparams = {}
    presets = {
        # IRM paper (Arjovsky et al. 2019), Colored MNIST, tuned ERM: hidden, l2, lr, 501 steps
        # (our step 500 is their "step 500 of 501": the model after 500 updates).
        "irm-paper": {"hidden_dim": 256, "l2": 0.001, "lr": 0.001, "batch_size": 0, "steps": 500},
        # The same paper's tuned "grayscale" oracle (101 steps: our step 100). A preset cannot
        # choose the model: run it with model "mlp_grayscale" (--model mlp_grayscale).
        "irm-paper-grayscale": {"hidden_dim": 83, "l2": 0.0008602868865288383, "lr": 0.0028171488133821726,
                                "batch_size": 0, "steps": 100},
    }

    def objective(self, model: nn.Module, batches: Sequence[Batch], step: int) -> Objective:
        losses = self.env_losses(self.env_logits(model, batches), batches)
        return Objective(risk=losses.mean(), env_losses=losses)
