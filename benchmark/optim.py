"""Adam for a pack of runs: per-run learning rate, weight decay, step count and resets.

The update is torch.optim.Adam's (Kingma & Ba 2015 with torch's conventions: L2 weight
decay added to the gradient, eps added after the bias-corrected square root), applied to
parameters whose leading dimension is the run. Each run has its own learning rate and
weight decay (tensors of shape (R,)), its own step count (so its own bias correction), and
can be reset alone: DomainBed re-creates the optimizer at a run's anneal step, which here
zeroes that run's moments and step count and nothing else. A run that is not ``active``
(it diverged) is left exactly as it is.

Every operation is elementwise or broadcasts a per-run scalar, so a run's update does not
depend on its pack-mates. The moments are updated with separate multiplications and
additions (no fused lerp/addcmul), whose rounding is the same in vectorised and scalar code.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch


class PackedAdam:
    def __init__(self, params: Mapping[str, torch.Tensor], lr: torch.Tensor, weight_decay: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = dict(params)
        first = next(iter(self.params.values()))
        self.runs = first.shape[0]
        self.lr = torch.as_tensor(lr, dtype=torch.float64, device=first.device).reshape(self.runs)
        self.weight_decay = torch.as_tensor(weight_decay, dtype=torch.float64, device=first.device).reshape(self.runs)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = torch.zeros(self.runs, dtype=torch.float64, device=first.device)
        self.exp_avg = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self._decay = bool((self.weight_decay != 0).any())

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def reset(self, runs: torch.Tensor) -> None:
        """Forget the moments and step count of the runs where ``runs`` (bool, (R,)) is true."""
        if not bool(runs.any()):
            return
        self.steps[runs] = 0.0
        for name in self.params:
            self.exp_avg[name][runs] = 0.0
            self.exp_avg_sq[name][runs] = 0.0

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One Adam update of the ``active`` runs (bool, (R,)); the others are untouched."""
        self.steps += active.to(self.steps.dtype)
        t = self.steps.clamp(min=1.0)
        # Per-run scalars in float64 (torch computes them as Python floats), used in the
        # parameters' dtype.
        step_size = self.lr / (1.0 - self.beta1 ** t)
        bias_correction2_sqrt = (1.0 - self.beta2 ** t).sqrt()
        for name, p in self.params.items():
            grad = p.grad
            if grad is None:
                continue
            shape = (self.runs,) + (1,) * (p.dim() - 1)
            keep = active.reshape(shape)
            if self._decay:
                grad = grad + self.weight_decay.to(p.dtype).reshape(shape) * p
            m = self.exp_avg[name] * self.beta1 + grad * (1.0 - self.beta1)
            v = self.exp_avg_sq[name] * self.beta2 + (grad * grad) * (1.0 - self.beta2)
            denom = v.sqrt() / bias_correction2_sqrt.to(p.dtype).reshape(shape) + self.eps
            update = step_size.to(p.dtype).reshape(shape) * (m / denom)
            p.copy_(torch.where(keep, p - update, p))
            self.exp_avg[name] = torch.where(keep, m, self.exp_avg[name])
            self.exp_avg_sq[name] = torch.where(keep, v, self.exp_avg_sq[name])

    # One run's state, in and out (checkpoints are per run) -----------------------------------

    def run_state_dict(self, run: int) -> dict[str, Any]:
        return {"step": float(self.steps[run]),
                "exp_avg": {name: m[run].detach().clone() for name, m in self.exp_avg.items()},
                "exp_avg_sq": {name: v[run].detach().clone() for name, v in self.exp_avg_sq.items()}}

    def check_run_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or set(state) != {"step", "exp_avg", "exp_avg_sq"}:
            raise ValueError("optimizer state is not a packed Adam run state")
        for key in ("exp_avg", "exp_avg_sq"):
            if set(state[key]) != set(self.params):
                raise ValueError(f"optimizer state {key} names other parameters")
            for name, p in self.params.items():
                if tuple(state[key][name].shape) != tuple(p.shape[1:]):
                    raise ValueError(f"optimizer state {key}[{name}] has shape {tuple(state[key][name].shape)}")
        if not math.isfinite(float(state["step"])) or float(state["step"]) < 0:
            raise ValueError(f"optimizer step count {state['step']!r} is not a count")

    @torch.no_grad()
    def load_run_state_dict(self, run: int, state: Mapping[str, Any]) -> None:
        self.check_run_state(state)
        self.steps[run] = float(state["step"])
        for name in self.params:
            self.exp_avg[name][run] = state["exp_avg"][name]
            self.exp_avg_sq[name][run] = state["exp_avg_sq"][name]
