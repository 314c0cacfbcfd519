"""The method API of a pack of runs: per-run schedules, the packed Adam, the explicit path.

Expected values come from elsewhere than the code under test: by hand, with numpy, from
torch's own ``torch.optim.Adam`` run once per run, and for the explicit path from ERM's
simple path (the same step written the other way).
"""

import numpy as np
import pytest
import torch

from invbench.hparams import TRAINING_HPARAMS
from invbench.method import Objective, StepResult
from invbench.methods.erm import ERM
from invbench.models import build_model
from invbench.optim import PackedAdam
from invbench.packed import PackedModel
from invbench.registry import METHODS
from invbench.tasks import Task
from invbench.trainer import train_step


def make(name, runs, n_envs=2, task="binary", **shared):
    cls = METHODS.get(name)
    base = {k: v.default for k, v in {**TRAINING_HPARAMS, **cls.hparams}.items()}
    base.update(shared)
    return cls([{**base, **run} for run in runs], n_envs, Task(task))


# The scheduled penalty: weights, divisors and resets are each run's own ------------------

class GainPack:
    """A packed model with one parameter per run, a gain g (R, 1) of 1.0: outputs = g * x,
    so the outputs are the inputs (the test chooses the logits) and sum ||theta||^2 = 1."""

    def __init__(self, runs):
        self.gain = torch.ones(runs, 1, dtype=torch.float64, requires_grad=True)

    def __call__(self, x):
        return self.gain[:, :, None] * x

    def packed_parameters(self):
        return {"gain": self.gain}


class RecordingOptimizer:
    """Records what the method asks of the optimizer; updates nothing."""

    def __init__(self):
        self.resets, self.steps = [], []

    def reset(self, runs):
        self.resets.append(runs.tolist())

    def zero_grad(self):
        pass

    def step(self, active):
        self.steps.append(active.tolist())


def bce(f, y):
    f, y = np.asarray(f, dtype=float), np.asarray(y, dtype=float)
    p = 1 / (1 + np.exp(-f))
    return float(np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)))


# two runs, two environments: (logits, labels) of run 0 and run 1
ENV_0 = [([0.5, -1.0, 2.0, 0.0], [1, 0, 0, 1]), ([1.2, 0.7, -2.5, 0.1], [1, 0, 0, 0])]
ENV_1 = [([-0.4, 3.0, 0.9, 1.1], [0, 1, 1, 0]), ([0.3, -1.5, 2.1, -0.8], [0, 0, 1, 1])]


def two_run_batches():
    return [(torch.tensor([logits for logits, _ in env], dtype=torch.float64)[:, :, None],
             torch.tensor([labels for _, labels in env], dtype=torch.float64)) for env in (ENV_0, ENV_1)]


@pytest.mark.parametrize("name", ["irm", "vrex", "mmrex"])
def test_scheduled_penalty_weights_divisors_and_resets_are_per_run(name):
    # run 0 anneals at step 5 to weight 100, run 1 at step 10 to weight 30
    method = make(name, [{"penalty_weight": 100.0, "anneal_iters": 5}, {"penalty_weight": 30.0, "anneal_iters": 10}],
                  scale_loss=True, reset_optimizer=True)
    batches = two_run_batches()
    at_7 = method.objective(GainPack(2), batches, 7)
    assert at_7.penalty_weight.tolist() == [100.0, 1.0]  # run 0 annealed, run 1 still at 1.0 ("not 0")
    assert at_7.divide_by.tolist() == [100.0, 1.0]
    at_12 = method.objective(GainPack(2), batches, 12)
    assert at_12.penalty_weight.tolist() == [100.0, 30.0] and at_12.divide_by.tolist() == [100.0, 30.0]
    at_3 = method.objective(GainPack(2), batches, 3)
    assert at_3.penalty_weight.tolist() == [1.0, 1.0] and at_3.divide_by.tolist() == [1.0, 1.0]
    assert method.optimizer_reset_mask(5).tolist() == [True, False]
    assert method.optimizer_reset_mask(10).tolist() == [False, True]
    assert method.optimizer_reset_mask(7).tolist() == [False, False]


def test_the_shared_step_composes_each_runs_loss_and_resets_only_its_runs():
    # V-REx: loss_r = (mean_e R_e + l2_r * ||theta_r||^2 + w_r * var_e R_e) / divide_by_r
    weights, anneals, l2 = [100.0, 30.0], [5, 10], [0.01, 0.25]
    method = make("vrex", [{"penalty_weight": w, "anneal_iters": a} for w, a in zip(weights, anneals)],
                  scale_loss=True, reset_optimizer=True)
    optimizer = RecordingOptimizer()
    both = torch.tensor([True, True])
    for step in (4, 5, 7, 10):
        result = train_step(GainPack(2), method, optimizer, two_run_batches(), step,
                            torch.tensor(l2, dtype=torch.float64), both)
        for r in range(2):
            risks = np.array([bce(*ENV_0[r]), bce(*ENV_1[r])])
            weight = weights[r] if step >= anneals[r] else 1.0
            divisor = weight if weight > 1.0 else 1.0
            expected = (risks.mean() + l2[r] * 1.0 + weight * np.var(risks)) / divisor
            assert result.loss[r].item() == pytest.approx(expected, rel=1e-12), (step, r)
    # run 0 is reset before step 5's update, run 1 before step 10's; never at other steps
    assert optimizer.resets == [[False, False], [True, False], [False, False], [False, True]]
    # a run that stopped (diverged earlier) is not reset at its anneal step
    optimizer = RecordingOptimizer()
    train_step(GainPack(2), method, optimizer, two_run_batches(), 10, torch.tensor(l2, dtype=torch.float64),
               torch.tensor([True, False]))
    assert optimizer.resets == [[False, False]] and optimizer.steps == [[True, False]]


# PackedAdam against torch.optim.Adam -----------------------------------------------------

STEPS, RESET_AT, INACTIVE = 50, 20, range(30, 40)


def run_loss(w, b, x, t):
    """One run's loss: a small nonlinear regression, w (3, 2), b (2,), x (5, 3), t (5, 2)."""
    return ((torch.tanh(x @ w + b) - t) ** 2).sum() + 0.1 * torch.sin(w).sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("R", [1, 3])
def test_packed_adam_is_torch_adam_per_run_with_resets_and_inactive_runs(R, dtype):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(R, 3, 2, generator=gen, dtype=torch.float64).to(dtype)
    b0 = torch.randn(R, 2, generator=gen, dtype=torch.float64).to(dtype)
    x = torch.randn(R, 5, 3, generator=gen, dtype=torch.float64).to(dtype)
    t = torch.randn(R, 5, 2, generator=gen, dtype=torch.float64).to(dtype)
    lrs, decays = [1e-2, 3e-3, 5e-2][:R], [0.0, 0.1, 1e-3][:R]
    reset_run = 1 if R == 3 else 0   # re-created at step RESET_AT
    inactive_run = 2 if R == 3 else 0  # not updated at the steps in INACTIVE

    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    # float64, as the Trainer gives them: a float32 lr of 1e-2 is 1e-2 * (1 - 2e-8)
    packed = PackedAdam({"w": w, "b": b}, lr=torch.tensor(lrs, dtype=torch.float64),
                        weight_decay=torch.tensor(decays, dtype=torch.float64))
    singles = [(w0[r].clone().requires_grad_(), b0[r].clone().requires_grad_()) for r in range(R)]
    torch_adams = [torch.optim.Adam(singles[r], lr=lrs[r], weight_decay=decays[r]) for r in range(R)]

    for step in range(STEPS):
        active = torch.tensor([not (r == inactive_run and step in INACTIVE) for r in range(R)])
        if step == RESET_AT:
            packed.reset(torch.tensor([r == reset_run for r in range(R)]))
            torch_adams[reset_run] = torch.optim.Adam(singles[reset_run], lr=lrs[reset_run],
                                                      weight_decay=decays[reset_run])
        before = (w[inactive_run].detach().clone(), b[inactive_run].detach().clone(),
                  packed.exp_avg["w"][inactive_run].clone(), packed.exp_avg_sq["b"][inactive_run].clone(),
                  float(packed.steps[inactive_run]))
        packed.zero_grad()
        # every run has a gradient, the inactive one included: the optimizer must ignore it
        sum(run_loss(w[r], b[r], x[r], t[r]) for r in range(R)).backward()
        packed.step(active)
        for r in range(R):
            if active[r]:
                torch_adams[r].zero_grad()
                run_loss(*singles[r], x[r], t[r]).backward()
                torch_adams[r].step()
        if not active[inactive_run]:
            after = (w[inactive_run], b[inactive_run], packed.exp_avg["w"][inactive_run],
                     packed.exp_avg_sq["b"][inactive_run])
            for old, new in zip(before, after):
                assert torch.equal(old, new), f"inactive run changed at step {step}"
            assert float(packed.steps[inactive_run]) == before[4]

    for r in range(R):
        state = torch_adams[r].state[singles[r][0]]
        pairs = [(w[r].detach(), singles[r][0].detach(), 1e-6), (b[r].detach(), singles[r][1].detach(), 1e-6),
                 # the moments reach the parameters only through m / sqrt(v): float32 rounding
                 # (torch's fused lerp / addcmul against separate operations) shows more there
                 (packed.exp_avg["w"][r], state["exp_avg"], 1e-5), (packed.exp_avg_sq["w"][r], state["exp_avg_sq"], 1e-5)]
        for got, expected, float32_rel in pairs:
            if dtype == torch.float64:
                torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
            else:  # a few float32 ulps of the tensor's scale (an element near 0 has no relative precision)
                assert (got - expected).abs().max() <= float32_rel * expected.abs().max(), (r, got, expected)
        assert float(packed.steps[r]) == float(state["step"])
    counts = [STEPS - (RESET_AT if r == reset_run else 0) - (len(INACTIVE) if r == inactive_run else 0)
              for r in range(R)]
    assert packed.steps.tolist() == counts


# The explicit path: per-environment gradients ---------------------------------------------

def logistic_pack(runs=3):
    """A pack of the registered linear model (3 inputs, 1 logit), float64, each run seeded alone."""
    models = []
    for r in range(runs):
        torch.manual_seed(100 + r)
        models.append(build_model("linear", (3,), 1, {}))
    return PackedModel(models).double()


def environments(runs=3, sizes=(6, 4)):
    """Per-run data: each environment (x (R, n, 3), y (R, n)) with different rows per run."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for n in sizes:
        x = torch.randn(runs, n, 3, generator=gen, dtype=torch.float64)
        y = (torch.rand(runs, n, generator=gen, dtype=torch.float64) > 0.5).to(torch.float64)
        out.append((x, y))
    return out


def test_env_gradients_are_each_runs_closed_form_logistic_gradients():
    model, batches = logistic_pack(), environments()
    method = ERM({}, 2, Task("binary"))  # a single mapping of hparams: only the helpers are used
    losses = method.env_losses(method.env_logits(model, batches), batches)  # (E, R)
    grads = method.env_gradients(losses, model.packed_parameters())
    weight = model.packed_parameters()["linear.weight"].detach().numpy()  # (R, 1, 3)
    bias = model.packed_parameters()["linear.bias"].detach().numpy()  # (R, 1)
    assert len(grads) == 2
    for e, (x, y) in enumerate(batches):
        x, y = x.numpy(), y.numpy()
        for r in range(3):
            # d/dw mean BCE(x w + b, y) = mean((sigmoid - y) x), d/db = mean(sigmoid - y)
            residual = 1 / (1 + np.exp(-(x[r] @ weight[r, 0] + bias[r, 0]))) - y[r]
            np.testing.assert_allclose(grads[e]["linear.weight"][r, 0].numpy(),
                                       (residual[:, None] * x[r]).mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(grads[e]["linear.bias"][r].numpy(), [residual.mean()], rtol=1e-12)


class AveragedEnvGradientERM(ERM):
    """A test-only method on the explicit path: ERM's step written as the average of the
    environments' gradients (what a gradient-level method starts from)."""

    def update(self, model, batches, step, optimizer, l2, active):
        losses = self.env_losses(self.env_logits(model, batches), batches)  # (E, R)
        params = model.packed_parameters()
        grads = self.env_gradients(losses, params)
        optimizer.zero_grad()
        for name, p in params.items():
            p.grad = sum(g[name] for g in grads) / len(grads)
        optimizer.step(active)
        objective = Objective(risk=losses.mean(dim=0).detach(), env_losses=losses.detach())
        return StepResult(objective.risk, objective, diverged=torch.zeros_like(active))


def test_the_explicit_path_with_env_gradients_trains_like_erms_simple_path():
    batches, lrs = environments(), torch.tensor([0.05, 0.01, 0.2], dtype=torch.float64)
    active, l2 = torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.float64)
    trained = []
    for method in (ERM([{}] * 3, 2, Task("binary")), AveragedEnvGradientERM([{}] * 3, 2, Task("binary"))):
        model = logistic_pack()
        optimizer = PackedAdam(model.packed_parameters(), lr=lrs, weight_decay=torch.zeros(3, dtype=torch.float64))
        for step in range(5):
            train_step(model, method, optimizer, batches, step, l2, active)
        trained.append({n: p.detach().clone() for n, p in model.packed_parameters().items()})
    simple, explicit = trained
    start = logistic_pack().packed_parameters()
    for name in simple:
        assert not torch.allclose(simple[name], start[name])  # it trained
        torch.testing.assert_close(explicit[name], simple[name], rtol=1e-6, atol=1e-12)


# The penalty weight keeps the hyperparameter's value --------------------------------------

@pytest.mark.parametrize("name", ["irm", "vrex", "mmrex"])
def test_the_penalty_weight_of_a_double_precision_loss_is_the_configured_value(name):
    weight = 91257.18613115903  # the irm-paper protocol's; before v2 the loss used the Python float
    method = make(name, [{"penalty_weight": weight, "anneal_iters": 0}, {"penalty_weight": 0.4, "anneal_iters": 0}],
                  scale_loss=True)
    objective = method.objective(GainPack(2), two_run_batches(), 0)  # float64 logits: a float64 loss
    assert objective.penalty_weight.tolist() == [weight, 0.4]
    assert objective.divide_by.tolist() == [weight, 1.0]
