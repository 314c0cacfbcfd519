"""AND-mask: follow only the gradient components whose signs agree across environments."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from invbench.hparams import HParam, Uniform
from invbench.method import Batch, Method, Objective, StepResult, compose_loss
from invbench.packed import PackedModel
from invbench.registry import METHODS

DOMAINBED, UNIT_TESTS = "domainbed", "unit_tests"


@METHODS.register("andmask")
class ANDMask(Method):
    """AND-mask: the mean of the environments' gradients, kept where their signs agree.

    Parascandolo, Neitz, Orvieto, Gresele & Schoelkopf (2021), "Learning explanations that
    are hard to vary", ICLR. With g_e = d R_e / d theta (R_e: environment e's mean loss, E
    environments) and every component j of every parameter tensor taken alone:

        m_j = [ agreement_j passes tau ],   direction = m * (1/E) sum_e g_e   [+ 2 l2 theta]

    The two variants differ in four places (``variant``):

      - "domainbed" (DomainBed's ANDMask, the default): agreement_j = |(1/E) sum_e sign(g_e,j)|
        and the mask keeps agreement_j >= tau; each parameter tensor's direction is rescaled by
        1 / (1e-10 + kept / components), so that masking does not shrink the step; the
        direction is the gradient of the shared Adam step (weight decay as Adam's).
      - "unit_tests" (the linear unit tests' AndMask, Aubin et al. 2021): every weight tensor
        (a parameter with two or more dimensions in one run: the linear model's coefficients,
        which is all the unit tests normalise; not the biases) of each environment's gradient
        is first divided by its norm; the mask keeps |sum_e sign(g_e,j)| > E * tau (strict);
        no rescaling; and no Adam: plain gradient descent theta <- theta - lr * direction -
        lr * weight_decay * theta, with each run's lr and weight_decay (as the trainer gave
        them to the optimizer). The optimizer's moments and step count stay untouched.

    Signs, masks, norms and rescaling are per run: the runs of a pack never mix. The l2 term
    (the IRM code's, off by default) is added to the direction unmasked: it is not a risk.
    The training log ``mask_kept`` is the share of all components the mask kept.

    Defaults and searches: tau 1 and U(0.5, 1) from DomainBed (hparams_registry). The unit
    tests' AndMask uses tau 0.9 with U(0.8, 1), lr 1e-3 with 10^U(-4, 0) and weight decay 0
    with 10^U(-5, 0) (scripts/models.py): values for a protocol that runs variant "unit_tests".
    """

    exact_on_sufficient_statistics = True  # gradients of each environment's mean loss

    hparams = {
        "tau": HParam(1.0, Uniform(0.5, 1.0), low=0.0, high=1.0,
                      help="agreement of the gradient signs a component needs to be kept (fraction of environments)"),
        "variant": HParam(DOMAINBED, choices=(DOMAINBED, UNIT_TESTS),
                          help="domainbed: mean sign >= tau, rescale, Adam; unit_tests: normalised weight "
                               "gradients, |sum of signs| > E * tau, no rescale, plain gradient descent"),
    }

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any], steps: int) -> list[str]:
        if hparams["variant"] == UNIT_TESTS and hparams["tau"] >= 1.0:
            return [f"andmask variant unit_tests keeps |sum of signs| > E * tau, which tau={hparams['tau']:g} "
                    "never passes: no parameter is ever updated; use tau < 1 (the unit tests use 0.9)"]
        return []

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        self.variant = self.hp["variant"]
        self.tau = self.per_run("tau", torch.float64)

    def to(self, device: torch.device) -> "ANDMask":
        super().to(device)
        self.tau = self.tau.to(device)
        return self

    def update(self, model: PackedModel, batches: Sequence[Batch], step: int, optimizer: Any, l2: torch.Tensor,
               active: torch.Tensor) -> StepResult:
        params = model.packed_parameters()
        losses = self.env_losses(self.env_logits(model, batches), batches)  # (E, R)
        env_grads = self.env_gradients(losses, params)
        losses = losses.detach()
        directions, kept = {}, 0.0
        with torch.no_grad():
            for name, p in params.items():
                grads = torch.stack([g[name] for g in env_grads])  # (E, R, ...)
                directions[name], kept_here = self.masked_direction(grads)
                kept = kept + kept_here
            components = sum(p[0].numel() for p in params.values())
            objective = Objective(risk=losses.mean(dim=0), env_losses=losses,
                                  logs={"mask_kept": kept / components})
            loss = compose_loss(objective, model, l2)
            update = active & torch.isfinite(loss)
            if bool((l2 != 0).any()):  # d(l2 * ||theta||^2) / d theta, added unmasked
                for name, p in params.items():
                    directions[name] = directions[name] + (2.0 * l2).to(p.dtype).reshape(_runs(p)) * p
            if self.variant == UNIT_TESTS:
                self._gradient_descent(params, directions, optimizer, update)
            else:
                optimizer.zero_grad()
                for name, p in params.items():
                    p.grad = directions[name]
                optimizer.step(update)
        return StepResult(loss, objective, diverged=active & ~torch.isfinite(loss))

    def masked_direction(self, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One parameter's update direction from its per-environment gradients (E, R, ...),
        and the number of components each run keeps ((R,), float64)."""
        envs, shape = grads.shape[0], _runs(grads[0])
        signs = torch.sign(grads).sum(dim=0).abs().to(torch.float64)  # exact: small integers
        if self.variant == UNIT_TESTS:
            if grads.dim() >= 4:  # a weight tensor (run and environment dimensions, then 2+)
                norms = torch.linalg.vector_norm(grads.flatten(2), dim=2)  # (E, R)
                norms = norms.reshape(grads.shape[:2] + (1,) * (grads.dim() - 2))
                grads = torch.where(norms > 0, grads / norms, grads)  # a zero gradient stays zero
            mask = signs > envs * self.tau.reshape(shape)
        else:
            mask = signs / envs >= self.tau.reshape(shape)
        mask = mask.to(grads.dtype)
        kept = mask.reshape(mask.shape[0], -1).sum(dim=1).to(torch.float64)
        direction = mask * grads.mean(dim=0)
        if self.variant == DOMAINBED:
            rescale = 1.0 / (1e-10 + kept / grads[0, 0].numel())
            direction = direction * rescale.to(grads.dtype).reshape(shape)
        return direction, kept

    @staticmethod
    def _gradient_descent(params: Mapping[str, torch.Tensor], directions: Mapping[str, torch.Tensor],
                          optimizer: Any, update: torch.Tensor) -> None:
        """theta <- theta - lr * direction - lr * weight_decay * theta for the updated runs,
        with each run's learning rate and weight decay as the optimizer holds them."""
        lr_decay = optimizer.lr * optimizer.weight_decay  # float64 (R,)
        for name, p in params.items():
            shape = _runs(p)
            stepped = (p - optimizer.lr.to(p.dtype).reshape(shape) * directions[name]
                       - lr_decay.to(p.dtype).reshape(shape) * p)
            p.copy_(torch.where(update.reshape(shape), stepped, p))


def _runs(tensor: torch.Tensor) -> tuple[int, ...]:
    """The shape that broadcasts a per-run (R,) value over ``tensor`` (R, ...)."""
    return (tensor.shape[0],) + (1,) * (tensor.dim() - 1)
