"""The runner composes each step's loss as the IRM code does (docs/protocols.md section 1):

    (risk + l2 * sum of squared norms of ALL parameters + w * penalty) / (w if w > 1 and scale_loss)

checked against gradients derived by hand (numpy) for a linear model with bias and the
full-batch IRMv1 penalty on a regression task, and the optimizer re-created at the anneal step.
"""

import numpy as np
import pytest
import torch

import invbench.trainer as trainer
from invbench.data import TRAIN
from invbench.runner import build_dataset, run
from invbench.spec import make_spec

L2, WEIGHT, LR = 0.1, 50.0, 0.01


class Recording:
    """Plain SGD in the packed optimizer's interface that records, before each update, the
    parameters and their gradients (run 0 of the pack), and the resets it was asked for."""

    log: list = []
    resets: list = []

    def __init__(self, params, lr, weight_decay):
        self.params = dict(params)
        if not Recording.log:  # a non-zero bias, so that leaving it out of the l2 term shows
            with torch.no_grad():
                self.params["linear.bias"].fill_(0.7)

    def zero_grad(self):
        for p in self.params.values():
            p.grad = None

    def reset(self, runs):
        if bool(runs.any()):
            Recording.resets.append(len(Recording.log))  # the number of updates made before it

    @torch.no_grad()
    def step(self, active):
        params = list(self.params.values())
        Recording.log.append(([p[0].detach().double().clone() for p in params],
                              [p.grad[0].detach().double().clone() for p in params]))
        for p in params:
            p -= LR * p.grad

    def run_state_dict(self, run):  # what the checkpoint of run ``run`` holds
        return {}


def expected_gradient(weight, bias, envs, l2, penalty_weight, divide_by):
    """d/d(weight, bias) of (mean_e MSE_e + l2 (|w|^2 + b^2) + pw * mean_e g_e^2) / divide_by,
    g_e = d/ds mean((s f - y)^2) at s = 1 = 2 mean((f - y) f), f = x w + b."""
    w, b = weight.reshape(-1), float(bias.reshape(-1)[0])
    grad_w, grad_b = 2 * l2 * w, 2 * l2 * b
    for x, y in envs:
        n = len(y)
        f = x @ w + b
        r = f - y
        grad_w = grad_w + (2 / n * x.T @ r) / len(envs)
        grad_b = grad_b + (2 / n * r.sum()) / len(envs)
        g = 2 * np.mean(r * f)
        dg_df = 2 / n * (2 * f - y)
        grad_w = grad_w + penalty_weight * 2 * g * (x.T @ dg_df) / len(envs)
        grad_b = grad_b + penalty_weight * 2 * g * dg_df.sum() / len(envs)
    return grad_w / divide_by, grad_b / divide_by


@pytest.mark.parametrize("scale_loss", [True, False])
def test_step_gradients_follow_the_irm_codes_loss(tmp_path, monkeypatch, scale_loss):
    monkeypatch.setattr(Recording, "log", [])
    monkeypatch.setattr(Recording, "resets", [])
    monkeypatch.setattr(trainer, "PackedAdam", Recording)
    spec = make_spec("linear_sem", "irm", dataset_options={"n_per_env": 50}, steps=3, eval_every=3,
                     model="linear", device="cpu",
                     overrides={"l2": L2, "estimator": "full_batch", "anneal_iters": 1, "penalty_weight": WEIGHT,
                                "scale_loss": scale_loss, "reset_optimizer": True})
    run(spec, tmp_path)
    dataset = build_dataset(spec)
    envs = [tuple(t.double().numpy() for t in dataset.envs[i].splits[TRAIN]) for i in (0, 1)]
    assert len(Recording.log) == 3
    assert Recording.resets == [1]  # reset at the anneal step (DomainBed re-creates the optimizer)
    for step, (params, grads) in enumerate(Recording.log):
        weight, bias = (p.numpy() for p in params)
        penalty_weight = 1.0 if step < 1 else WEIGHT  # 1.0 (not 0) before the anneal step
        divide_by = penalty_weight if scale_loss and penalty_weight > 1 else 1.0
        grad_w, grad_b = expected_gradient(weight, bias, envs, L2, penalty_weight, divide_by)
        np.testing.assert_allclose(grads[0].numpy().reshape(-1), grad_w, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(grads[1].numpy().reshape(-1), [grad_b], rtol=1e-4, atol=1e-7)
