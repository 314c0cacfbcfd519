"""Fishr: match the environments' variances of the classifier's per-sample gradients."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import autograd

from invbench.errors import ConfigError
from invbench.hparams import HParam, LogUniform, RandInt, Uniform
from invbench.method import Batch, Objective
from invbench.methods._penalty import PenaltySchedule, ScheduledPenaltyMethod
from invbench.packed import PackedModel
from invbench.registry import METHODS


@METHODS.register("fishr")
class Fishr(ScheduledPenaltyMethod):
    """Fishr: mean environment risk + w * distance between the environments' per-sample gradient variances.

    Rame, Dancette & Cord (2022), "Fishr: Invariant Gradient Variances for Out-of-Distribution
    Generalization", ICML. The classifier is the model's last linear layer, f_i = W z_i + b on
    the features z_i; the per-sample gradient of example i's loss l_i with respect to (W, b) is
    g_i = (a_i z_i^T, a_i) with a_i = d l_i / d f_i (closed form; no per-sample autograd). Per
    training environment e (its n_e examples of the step), componentwise over the P entries of
    (W, b), and per run:

        v_e = (1/n_e) sum_i (g_i - mean_i g_i)^2                     the centred variance
        m_e <- ema * m_e + (1 - ema) * v_e;  s_e = m_e / (1 - ema)     (m_e = 0 at the start)
        penalty = (1/E) sum_e (1/P) ||s_e - (1/E) sum_e' s_e'||^2      ("mean"; "sum": no 1/E, 1/P)
        objective = (1/E) sum_e R_e + w(step) * penalty                 [+ l2 term, runner]

    v_e stays in the graph (with a_i's dependence on the logits), so the penalty trains the
    featurizer and the classifier; m_e's previous value is a constant (the moving average is
    the method's state, per run and environment, saved in the checkpoints). w(step) is
    ``warmup_weight`` before ``anneal_iters`` updates and ``penalty_weight`` from then on.

    Defaults and searches follow DomainBed's Fishr (Gulrajani & Lopez-Paz 2021 code, added by
    the Fishr authors): lambda 1000 (10^U(1, 4)), penalty_anneal_iters 1500 (U(0, 5000)), ema
    0.95 (U(0.90, 0.99)), weight 0 (not 1) before the anneal step, Adam re-created at it, the
    "mean" distance. The Fishr Colored MNIST code (IRM protocol) differs: no moving average
    (ema=0), the "sum" distance, weight 1.0 before the anneal step, the whole loss divided by
    the weight (scale_loss) and no optimizer reset, with the IRM code's tuned values. DomainBed's
    risk is the cross-entropy pooled over the environments' equal-sized batches; here it is the
    mean of the environments' risks, as for every method (equal when the batches are).
    """

    hparams = {
        "penalty_weight": HParam(1000.0, LogUniform(1, 4), low=0.0, high=1e12,
                                 help="weight of the gradient-variance distance from anneal_iters on"),
        "anneal_iters": HParam(1500, RandInt(0, 5000), low=0, high=10**9,
                               help="updates with the penalty weighted by warmup_weight before penalty_weight applies"),
        "warmup_weight": HParam(0.0, low=0.0, high=1e12,
                                help="weight of the penalty before anneal_iters (0 in DomainBed, 1.0 in the Fishr Colored MNIST code)"),
        "ema": HParam(0.95, Uniform(0.90, 0.99), low=0.0, high=0.999,
                      help="moving-average factor of each environment's gradient variance across steps (0: none)"),
        "distance": HParam("mean", choices=("mean", "sum"),
                           help="mean over environments and entries of the squared differences (DomainBed) "
                                "or their sum (Fishr Colored MNIST code)"),
        "scale_loss": HParam(False, help="divide the whole loss by the weight when it exceeds 1 (IRM/Fishr Colored MNIST code)"),
        "reset_optimizer": HParam(True, help="re-create the optimizer at the anneal step (DomainBed)"),
    }

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any], steps: int) -> list[str]:
        if hparams["anneal_iters"] >= steps and hparams["penalty_weight"] != hparams["warmup_weight"]:
            return [f"anneal_iters={hparams['anneal_iters']} >= steps={steps}: the penalty weight stays "
                    f"warmup_weight={hparams['warmup_weight']:g} for the whole run and "
                    f"penalty_weight={hparams['penalty_weight']:g} never applies; lower anneal_iters or raise steps"]
        return []

    def __init__(self, hparams, n_envs, task, env_sizes=None):
        super().__init__(hparams, n_envs, task, env_sizes)
        self.schedule = WarmupSchedule(self.hp)
        self.ema = self.per_run("ema", torch.float64)
        self.distance = self.hp["distance"]
        self.layout: ClassifierLayout | None = None
        # (R, E, P): each run's moving average m_e of each environment's gradient variance
        self.averages: torch.Tensor | None = None

    def bind(self, model: PackedModel) -> None:
        self._prepare(model)

    def objective(self, model: PackedModel, batches: Sequence[Batch], step: int) -> Objective:
        layout = self._prepare(model)
        losses, variances = [], []
        for x, y in batches:
            z = model.features(x)
            logits = model.classify(z)
            # (R, n): each example's loss, the one Task.run_losses averages
            elementwise = self.task._elementwise_loss(logits, y)
            # d l_i / d f_i of every example at once: l_i depends on its own logits only
            residuals = autograd.grad(elementwise.sum(), [logits], create_graph=True)[0]
            losses.append(elementwise.mean(dim=1))
            variances.append(gradient_variance(residuals, z, layout.bias))
        env_losses = torch.stack(losses)  # (E, R)
        smoothed = self._smooth(torch.stack(variances, dim=1))  # (R, E, P)
        penalty = variance_distance(smoothed, self.distance)
        return self.scheduled(env_losses.mean(dim=0), penalty, step, env_losses)

    def _smooth(self, variances: torch.Tensor) -> torch.Tensor:
        """s_e from this step's v_e (R, E, P); stores m_e, a constant for later steps."""
        if self.averages.shape != variances.shape:  # other environments or another model than bound
            raise ConfigError(f"fishr: gradient variances of shape {tuple(variances.shape)} do not fit the "
                              f"moving averages' {tuple(self.averages.shape)}")
        keep = self.ema.to(variances.dtype).reshape(-1, 1, 1)
        fresh = (1.0 - self.ema).to(variances.dtype).reshape(-1, 1, 1)
        averages = keep * self.averages.to(variances.dtype) + fresh * variances
        self.averages = averages.detach()
        # DomainBed's "1 - ema correction": the gradient reaching v_e does not depend on ema
        return averages / fresh

    def _prepare(self, model: PackedModel) -> "ClassifierLayout":
        """The classifier's layout, found once, and zero moving averages of its size."""
        if self.layout is None:
            self.layout = classifier_layout(model)
            if self.averages is None:
                weight = model.packed_parameters()[self.layout.weight]
                self.averages = torch.zeros(self.runs, self.n_envs, self.layout.entries, dtype=weight.dtype,
                                            device=weight.device)
        return self.layout

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.averages is None:  # not bound to a model yet: nothing gathered
            return {}
        return {"variance_averages": self.averages.detach().clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if not state:
            return
        saved = torch.as_tensor(state["variance_averages"])
        if self.averages is not None and saved.shape != self.averages.shape:
            raise ConfigError(f"fishr: saved moving averages have shape {tuple(saved.shape)}, "
                              f"expected {tuple(self.averages.shape)}")
        self.averages = saved.to(self.device)

    def to(self, device: torch.device) -> "Fishr":
        super().to(device)
        self.ema = self.ema.to(device)
        if self.averages is not None:
            self.averages = self.averages.to(device)
        return self


class WarmupSchedule(PenaltySchedule):
    """The penalty schedule with a configurable weight before the anneal step (Fishr: 0)."""

    def __init__(self, hp: Any, device: torch.device | None = None):
        super().__init__(hp, device)
        self.warmup_weight = torch.tensor([float(v) for v in hp.values("warmup_weight")], dtype=torch.float64,
                                          device=self.penalty_weight.device)

    def to(self, device: torch.device) -> "WarmupSchedule":
        super().to(device)
        self.warmup_weight = self.warmup_weight.to(device)
        return self

    def weight(self, step: int) -> torch.Tensor:
        return torch.where(self.anneal_iters <= step, self.penalty_weight, self.warmup_weight)


class ClassifierLayout:
    """Where the per-sample gradients live: the classifier's weight (and bias) parameter names."""

    def __init__(self, weight: str, bias: str | None, outputs: int, features: int):
        self.weight, self.bias_name, self.outputs, self.features = weight, bias, outputs, features

    @property
    def bias(self) -> bool:
        return self.bias_name is not None

    @property
    def entries(self) -> int:
        """P: the number of (W, b) entries of one run."""
        return self.outputs * (self.features + int(self.bias))


def classifier_layout(model: PackedModel) -> ClassifierLayout:
    """The model's classifier, checked to be one linear layer: the last weight matrix of the
    model and the bias beside it, and nothing else that ``model.classify`` reads."""
    params = model.packed_parameters()
    matrices = [name for name, p in params.items() if name.endswith("weight") and p.dim() == 3]
    if not matrices:
        raise ConfigError("fishr: the model has no weight matrix for a linear classifier")
    weight = matrices[-1]
    outputs, features = params[weight].shape[1:]
    bias = weight[: -len("weight")] + "bias"
    bias = bias if bias in params and tuple(params[bias].shape[1:]) == (outputs,) else None
    # The closed form holds only if the classifier is exactly this layer: check what it reads.
    probe = params[weight].new_zeros(params[weight].shape[0], 1, features)
    grads = autograd.grad(model.classify(probe).sum(), list(params.values()), allow_unused=True)
    read = {name for name, grad in zip(params, grads) if grad is not None}
    if read != {weight} | ({bias} if bias else set()):
        raise ConfigError(f"fishr needs a classifier that is one linear layer (weight and optional bias); "
                          f"this model's classifier reads {sorted(read)}")
    return ClassifierLayout(weight, bias, outputs, features)


def gradient_variance(residuals: torch.Tensor, z: torch.Tensor, bias: bool) -> torch.Tensor:
    """(R, P): the centred variance over the examples of each per-sample gradient entry.

    ``residuals`` a = d l / d f (R, n, out), ``z`` the features (R, n, d). Example i's
    gradient entries are a_ik z_ij for the weight (and a_ik for the bias: z_i gets a 1
    appended); Var = E[(a z)^2] - E[a z]^2, one output at a time, so that at most an (R, n, d)
    product exists at once, never the (n, out, d) per-sample gradients. Elementwise products
    and means over each run's own examples, not batched matrix products: CPU BLAS rounds
    those differently with the number of runs (measured), and a run must not depend on its pack.
    """
    runs, n, outputs = residuals.shape
    inputs = z.reshape(runs, n, -1)
    if bias:
        inputs = torch.cat([inputs, inputs.new_ones(runs, n, 1)], dim=2)
    squares = inputs.pow(2)
    rows = []
    for k in range(outputs):
        a = residuals[:, :, k:k + 1]
        first = (a * inputs).mean(dim=1)  # (R, d(+1)): the mean gradient
        second = (a.pow(2) * squares).mean(dim=1)
        rows.append(second - first.pow(2))
    return torch.cat(rows, dim=1)


def variance_distance(smoothed: torch.Tensor, distance: str) -> torch.Tensor:
    """(R,): from each run's s_e (R, E, P), the squared distances to their mean over
    environments, averaged over entries and environments ("mean") or summed ("sum")."""
    squares = (smoothed - smoothed.mean(dim=1, keepdim=True)).pow(2)
    if distance == "sum":
        return squares.sum(dim=2).sum(dim=1)
    return squares.mean(dim=2).mean(dim=1)
