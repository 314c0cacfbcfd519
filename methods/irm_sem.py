"""The IRM paper's SEM variant of IRM: a fixed classifier, reg * error + (1 - reg) * penalty."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import autograd

from invbench.hparams import Choice, HParam
from invbench.method import Batch, Method, Objective, StepResult
from invbench.models import FeatureMatrix
from invbench.packed import PackedModel
from invbench.registry import METHODS

# The regularisations the IRM code tries on its SEMs, one after another.
SEM_REGS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@METHODS.register("irm_sem")
class IRMSEM(Method):
    """IRM as the IRM paper ran its linear SEMs: reg * sum_e R_e + (1 - reg) * sum_e mean_j (d R_e / d w_j)^2.

    Arjovsky, Bottou, Gulrajani & Lopez-Paz (2019), "Invariant Risk Minimization", section
    5.1, as its code's InvariantRiskMinimization trains it (not IRMv1, which is ``irm``): the
    prediction is x Phi w with a trained feature matrix Phi and a fixed classifier w = ones
    (d x 1); per training environment e, R_e is the mean loss and g_e = d R_e / d w (with
    create_graph, so the penalty trains Phi). Objective per step:

        reg * sum_e R_e  +  (1 - reg) * sum_e (1/d) sum_j g_e,j^2     [+ l2 * sum ||theta||^2, runner]

    Sums over the environments, not means; reg weighs the risk, not the penalty (reg = 0:
    the penalty alone). The code tries reg in 0, 1e-5, ..., 1e-1 and keeps the one whose
    solution Phi w has the smallest squared error on the held-out sigma = 5 environment: here
    reg is a hyperparameter (searched over those six values) and a selection strategy chooses.

    w is a dummy vector that scales the model's features at 1: the prediction is
    classify(features(x) * w). With the model ``feature_matrix`` (features x Phi, classifier
    the fixed ones) that is the code's x Phi w and its gradient, exactly; with any other model
    it is the same objective with w scaling the inputs of the model's own (trained) classifier.
    ``risk`` in the logs is the weighted term reg * sum_e R_e; ``error`` is sum_e R_e.
    """

    exact_on_sufficient_statistics = True  # only each environment's mean loss

    hparams = {
        "reg": HParam(1e-3, Choice(SEM_REGS), low=0.0, high=1.0,
                      help="weight of the summed risk; the penalty's is 1 - reg (IRM code: one of 0, 1e-5, ..., 1e-1)"),
    }

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        losses, penalties = [], []
        for x, y in batches:
            loss, gradient = self._loss_and_classifier_gradient(model, x, y)
            losses.append(loss)
            penalties.append(gradient.pow(2).mean(dim=1))
        env_losses = torch.stack(losses)  # (E, R)
        error = env_losses.sum(dim=0)
        penalty = torch.stack(penalties).sum(dim=0)
        # reg in float64 as the code's Python float, each factor used in the loss's dtype
        reg = self.per_run("reg", dtype=torch.float64)
        return Objective(risk=reg.to(error.dtype) * error, penalty=penalty, penalty_weight=1.0 - reg,
                         env_losses=env_losses, logs={"error": error.detach()})

    # The explicit path: the feature matrix on a squared error in closed form ------------------

    def update(self, model: PackedModel, batches: Sequence[Batch], step: int, optimizer, l2: torch.Tensor,
               active: torch.Tensor) -> StepResult:
        """With the model ``feature_matrix`` and the squared error, the objective's gradient in
        closed form (``closed_form_step``): the same numbers as differentiating it, up to
        rounding, without the double backward pass, and with no batched matrix product (slow
        for the tiny matrices of many runs). Any other model: the simple path."""
        if not (isinstance(model.template, FeatureMatrix) and self.task.kind == "regression"):
            return super().update(model, batches, step, optimizer, l2, active)
        phi = model.packed_parameters()["phi"]
        objective, gradient = self.closed_form_step(phi.detach(), batches)
        loss = objective.risk + objective.penalty_weight.to(phi.dtype) * objective.penalty
        if bool((l2 != 0).any()):
            loss = loss + l2.to(phi.dtype) * phi.detach().pow(2).flatten(1).sum(1)
            gradient = gradient + 2 * l2.to(phi.dtype)[:, None, None] * phi.detach()
        finite = torch.isfinite(loss)
        update = active & finite
        reset = self.optimizer_reset_mask(step)
        if reset is not None:
            optimizer.reset(reset & update)
        optimizer.zero_grad()
        phi.grad = torch.where(update[:, None, None], gradient, torch.zeros_like(gradient))
        optimizer.step(update)
        return StepResult(loss, objective, diverged=active & ~finite)

    def closed_form_step(self, phi: torch.Tensor, batches: Sequence[Batch]) -> tuple[Objective, torch.Tensor]:
        """The objective and its gradient with respect to Phi (R, d, d) for x Phi w with w = ones
        and the mean squared error. Per environment, with residuals r = X Phi 1 - y over m rows:

            R_e = mean r^2,   u = X^T r / m,   g = d R_e / d w = 2 Phi^T u,   P_e = |g|^2 / d
            d R_e / d Phi = 2 u 1^T
            d P_e / d Phi = (4 / d) (u g^T + z 1^T),  z = X^T X Phi g / m

        (from dg = 2 dPhi^T u + 2 Phi^T X^T X dPhi 1 / m). Products of a run's vectors with
        its own rows, as elementwise products and sums."""
        runs, d = phi.shape[0], phi.shape[-1]
        reg = self.per_run("reg", dtype=torch.float64)
        reg_here = reg.to(phi.dtype)[:, None, None]
        solution = phi.sum(dim=-1)  # Phi w with w = ones: (R, d)
        losses, penalties = [], []
        gradient = torch.zeros_like(phi)
        for x, y in batches:
            x = x.reshape(runs, x.shape[1], -1)  # (R, m, d)
            m = x.shape[1]
            residual = (x * solution[:, None, :]).sum(-1) - y.to(phi.dtype)  # (R, m)
            u = (x * residual[:, :, None]).sum(1) / m  # (R, d)
            g = 2 * (phi * u[:, :, None]).sum(1)  # Phi^T u, doubled: (R, d)
            phi_g = (phi * g[:, None, :]).sum(-1)  # Phi g: (R, d)
            z = (x * ((x * phi_g[:, None, :]).sum(-1) / m)[:, :, None]).sum(1)  # X^T X Phi g / m
            losses.append(residual.pow(2).mean(dim=1))
            penalties.append(g.pow(2).mean(dim=1))
            risk_gradient = 2 * u[:, :, None].expand(runs, d, d)
            penalty_gradient = (4 / d) * (u[:, :, None] * g[:, None, :] + z[:, :, None])
            gradient = gradient + reg_here * risk_gradient + (1 - reg_here) * penalty_gradient
        env_losses = torch.stack(losses)
        error = env_losses.sum(dim=0)
        objective = Objective(risk=reg.to(error.dtype) * error, penalty=torch.stack(penalties).sum(dim=0),
                              penalty_weight=1.0 - reg, env_losses=env_losses, logs={"error": error})
        return objective, gradient

    def _loss_and_classifier_gradient(self, model: PackedModel, x: torch.Tensor, y: torch.Tensor
                                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each run's mean loss (R,) and its gradient (R, d) with respect to the dummy w = ones
        that scales the d features, kept in the graph. One w per run: the gradient of the sum
        over runs is each run's own. w is not a parameter: never trained."""
        features = model.features(x)  # (R, n, d)
        w = torch.ones(features.shape[0], features.shape[-1], device=features.device, dtype=features.dtype,
                       requires_grad=True)
        loss = self.task.run_losses(model.classify(features * w.unsqueeze(1)), y)
        return loss, autograd.grad(loss.sum(), [w], create_graph=True)[0]
