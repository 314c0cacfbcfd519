"""The methods' objectives against values derived by hand (numpy / math), never their own output."""

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from invbench.errors import ConfigError
from invbench.hparams import TRAINING_HPARAMS
from invbench.registry import METHODS
from invbench.spec import make_spec
from invbench.tasks import Task


class Identity(nn.Module):
    """A 'model' whose logits are its inputs, so a test chooses the logits directly."""

    def forward(self, x):
        return x


def make(name, n_envs=2, task="binary", env_sizes=None, **overrides):
    cls = METHODS.get(name)
    hp = {k: v.default for k, v in {**TRAINING_HPARAMS, **cls.hparams}.items()}
    hp.update(overrides)
    return cls(hp, n_envs, Task(task), env_sizes=env_sizes)


def batches_of(*envs):
    """(logits, labels) pairs as float tensors; logits become the Identity model's inputs."""
    out = []
    for logits, labels in envs:
        x = torch.tensor(logits, dtype=torch.float64)
        out.append((x.reshape(len(labels), -1) if x.ndim > 1 else x.reshape(-1, 1),
                    torch.tensor(labels, dtype=torch.float64)))
    return out


def sigmoid(f):
    return 1.0 / (1.0 + np.exp(-np.asarray(f, dtype=float)))


def bce(f, y):
    p, y = sigmoid(f), np.asarray(y, dtype=float)
    return float(np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)))


ENV_A = ([0.5, -1.0, 2.0, 0.0, -0.3, 1.5], [1, 0, 0, 1, 1, 1])
ENV_B = ([1.2, 0.7, -2.5, 0.1], [1, 0, 0, 0])
ENV_C = ([-0.4, 3.0, 0.9], [0, 1, 1])


# ERM -------------------------------------------------------------------------------------

def test_erm_is_the_mean_of_the_environments_mean_losses():
    method = make("erm")
    objective = method.objective(Identity(), batches_of(ENV_A, ENV_B), step=0)
    # not the pooled mean: the environments have 6 and 4 examples
    assert objective.risk.item() == pytest.approx((bce(*ENV_A) + bce(*ENV_B)) / 2, rel=1e-12)
    assert objective.penalty is None


# IRMv1 -----------------------------------------------------------------------------------

def irm_gradient(f, y):
    """d/ds mean BCE(s f, y) at s = 1 = mean((sigmoid(f) - y) * f)."""
    return float(np.mean((sigmoid(f) - np.asarray(y)) * np.asarray(f)))


def test_irm_full_batch_penalty_is_the_squared_mean_of_residual_times_logit():
    method = make("irm", estimator="full_batch", anneal_iters=0, penalty_weight=7.0)
    objective = method.objective(Identity(), batches_of(ENV_A, ENV_B), step=3)
    expected = (irm_gradient(*ENV_A) ** 2 + irm_gradient(*ENV_B) ** 2) / 2
    assert objective.penalty.item() == pytest.approx(expected, rel=1e-12)
    assert objective.risk.item() == pytest.approx((bce(*ENV_A) + bce(*ENV_B)) / 2, rel=1e-12)
    assert objective.penalty_weight == 7.0


def test_irm_unbiased_penalty_multiplies_the_gradients_of_even_and_odd_halves():
    method = make("irm", estimator="unbiased")
    objective = method.objective(Identity(), batches_of(ENV_A, ENV_C), step=0)
    f, y = map(np.asarray, ENV_A)
    g, h = map(np.asarray, ENV_C)
    expected = (irm_gradient(f[0::2], y[0::2]) * irm_gradient(f[1::2], y[1::2])
                + irm_gradient(g[0::2], h[0::2]) * irm_gradient(g[1::2], h[1::2])) / 2
    assert objective.penalty.item() == pytest.approx(expected, rel=1e-12)
    # it can be negative, unlike the squared (biased) estimator
    assert expected != pytest.approx(make("irm", estimator="full_batch").objective(
        Identity(), batches_of(ENV_A, ENV_C), 0).penalty.item())


def test_irm_penalty_is_differentiable_with_the_closed_form_gradient():
    # one example: P(f) = ((sigmoid(f) - y) f)^2, dP/df = 2 r f (sigmoid'(f) f + r), r = sigmoid(f) - y
    f0, y0 = 0.8, 1.0
    logits = torch.tensor([[f0]], dtype=torch.float64, requires_grad=True)
    penalty = make("irm", estimator="full_batch").penalty(logits, torch.tensor([y0], dtype=torch.float64))
    penalty.backward()
    s = 1 / (1 + math.exp(-f0))
    r = s - y0
    assert logits.grad.item() == pytest.approx(2 * r * f0 * (s * (1 - s) * f0 + r), rel=1e-10)


def test_irm_penalty_for_multiclass_and_regression_tasks():
    logits = np.array([[1.0, -0.5, 0.2], [0.3, 0.3, 2.0], [-1.0, 0.5, 0.0]])
    labels = np.array([0, 2, 1])
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # d/ds CE(s f, y) = mean(sum_k softmax_k f_k - f_y)
    grad = np.mean((softmax * logits).sum(axis=1) - logits[np.arange(3), labels])
    method = make("irm", task="multiclass", estimator="full_batch")
    got = method.penalty(torch.tensor(logits), torch.tensor(labels))
    assert got.item() == pytest.approx(grad ** 2, rel=1e-12)

    f, y = np.array([0.5, 2.0, -1.0]), np.array([1.0, 1.0, 0.0])
    # d/ds mean((s f - y)^2) = 2 mean((f - y) f)
    method = make("irm", task="regression", estimator="full_batch")
    got = method.penalty(torch.tensor(f).reshape(-1, 1), torch.tensor(y))
    assert got.item() == pytest.approx((2 * np.mean((f - y) * f)) ** 2, rel=1e-12)


def test_irm_unbiased_estimator_needs_two_examples():
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        make("irm", estimator="unbiased").penalty(torch.zeros(1, 1), torch.zeros(1))


# The anneal schedule (IRMv1, V-REx and MM-REx share it) ----------------------------------

@pytest.mark.parametrize("name", ["irm", "vrex", "mmrex"])
def test_penalty_weight_is_one_before_anneal_and_the_configured_weight_from_it(name):
    method = make(name, penalty_weight=500.0, anneal_iters=10, scale_loss=False)
    weights = [method.objective(Identity(), batches_of(ENV_A, ENV_B), step).penalty_weight for step in (0, 9, 10, 11)]
    assert weights == [1.0, 1.0, 500.0, 500.0]
    assert method.objective(Identity(), batches_of(ENV_A, ENV_B), 10).divide_by == 1.0


@pytest.mark.parametrize("name", ["irm", "vrex", "mmrex"])
def test_scale_loss_divides_by_the_weight_only_when_it_exceeds_one(name):
    method = make(name, penalty_weight=500.0, anneal_iters=10, scale_loss=True)
    assert [method.objective(Identity(), batches_of(ENV_A, ENV_B), s).divide_by for s in (9, 10)] == [1.0, 500.0]
    small = make(name, penalty_weight=0.5, anneal_iters=0, scale_loss=True)
    assert small.objective(Identity(), batches_of(ENV_A, ENV_B), 3).divide_by == 1.0


@pytest.mark.parametrize("name", ["irm", "vrex", "mmrex"])
def test_optimizer_reset_step_is_the_anneal_step_when_asked(name):
    assert make(name, anneal_iters=42, reset_optimizer=True).optimizer_reset_step() == 42
    assert make(name, anneal_iters=42, reset_optimizer=False).optimizer_reset_step() is None


# V-REx and MM-REx ------------------------------------------------------------------------

def test_vrex_penalty_is_the_population_variance_of_the_environment_risks():
    risks = np.array([bce(*ENV_A), bce(*ENV_B), bce(*ENV_C)])
    method = make("vrex", n_envs=3)
    objective = method.objective(Identity(), batches_of(ENV_A, ENV_B, ENV_C), 0)
    assert objective.penalty.item() == pytest.approx(np.var(risks), rel=1e-12)  # numpy: ddof=0
    assert objective.risk.item() == pytest.approx(risks.mean(), rel=1e-12)
    summed = make("vrex", n_envs=3, risk_reduction="sum").objective(Identity(), batches_of(ENV_A, ENV_B, ENV_C), 0)
    assert summed.risk.item() == pytest.approx(risks.sum(), rel=1e-12)


def test_vrex_two_environment_penalty_is_a_quarter_of_the_rex_codes_squared_difference():
    r1, r2 = bce(*ENV_A), bce(*ENV_B)
    objective = make("vrex").objective(Identity(), batches_of(ENV_A, ENV_B), 0)
    assert 4 * objective.penalty.item() == pytest.approx((r1 - r2) ** 2, rel=1e-12)


@pytest.mark.parametrize("weight", [0.0, 0.4, 1.0, 25.0])
def test_mmrex_equals_the_papers_minimax_form(weight):
    risks = np.array([bce(*ENV_A), bce(*ENV_B), bce(*ENV_C)])
    lam = (1 - weight) / 3
    expected = (1 - 3 * lam) * risks.max() + lam * risks.sum()
    objective = make("mmrex", n_envs=3, penalty_weight=weight, anneal_iters=0).objective(
        Identity(), batches_of(ENV_A, ENV_B, ENV_C), 0)
    total = objective.risk.item() + objective.penalty_weight * objective.penalty.item()
    assert total == pytest.approx(expected, rel=1e-12)
    assert objective.logs["lambda_min"] == pytest.approx(lam)


# Group DRO -------------------------------------------------------------------------------

def test_groupdro_update_is_the_exponentiated_gradient_closed_form():
    eta = 0.3
    method = make("groupdro", n_envs=3, eta=eta)
    risks = np.array([bce(*ENV_A), bce(*ENV_B), bce(*ENV_C)])
    q = np.ones(3) / 3
    for step in range(2):
        objective = method.objective(Identity(), batches_of(ENV_A, ENV_B, ENV_C), step)
        q = q * np.exp(eta * risks)
        q = q / q.sum()
        np.testing.assert_allclose(method.q.numpy(), q, rtol=1e-12)
        # the updated weights weigh this step's losses
        assert objective.risk.item() == pytest.approx(float(q @ risks), rel=1e-12)
        assert objective.logs["q1"] == pytest.approx(q[1], rel=1e-12)


def test_groupdro_adjustment_adds_c_over_sqrt_n_in_the_update_only():
    eta, c, sizes = 0.5, 2.0, [100, 25]
    method = make("groupdro", eta=eta, adjustment=c, env_sizes=sizes)
    objective = method.objective(Identity(), batches_of(ENV_A, ENV_B), 0)
    risks = np.array([bce(*ENV_A), bce(*ENV_B)])
    q = np.exp(eta * (risks + c / np.sqrt(sizes)))
    q /= q.sum()
    np.testing.assert_allclose(method.q.numpy(), q, rtol=1e-12)
    assert objective.risk.item() == pytest.approx(float(q @ risks), rel=1e-12)


def test_groupdro_weights_are_method_state():
    method = make("groupdro", eta=1.0)
    method.objective(Identity(), batches_of(ENV_A, ENV_B), 0)
    saved = method.state_dict()
    fresh = make("groupdro", eta=1.0)
    assert not torch.equal(fresh.q, method.q)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.q, method.q)
    with pytest.raises(ConfigError, match="expected \\(3,\\)"):
        make("groupdro", n_envs=3).load_state_dict(saved)


def test_groupdro_adjustment_needs_the_environment_sizes():
    with pytest.raises(ConfigError, match="env_sizes"):
        make("groupdro", adjustment=1.0, env_sizes=None)


# Hyperparameters: declared, validated, protocols -----------------------------------------

@pytest.mark.parametrize("method, name, value, message", [
    ("irm", "penalty_weight", -1.0, "out of range"),
    ("irm", "anneal_iters", 1.5, "not int"),
    ("irm", "estimator", "squared", "one of 'unbiased', 'full_batch'"),
    ("irm", "scale_loss", "maybe", "true or false"),
    ("vrex", "risk_reduction", "median", "one of 'mean', 'sum'"),
    ("mmrex", "penalty_weight", float("inf"), "out of range"),
    ("groupdro", "eta", -0.1, "out of range"),
    ("groupdro", "adjustment", -1.0, "out of range"),
])
def test_invalid_hyperparameter_values_are_rejected_with_what_is_allowed(method, name, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_spec("linear_sem", method, overrides={name: value})
    assert name in str(info.value)


def test_irm_paper_protocol_has_the_papers_tuned_values():
    spec = make_spec("cmnist_irm", "irm", preset="irm-paper")
    expected = {"hidden_dim": 390, "l2": 0.00110794568, "lr": 0.0004898536566546834, "anneal_iters": 190,
                "penalty_weight": 91257.18613115903, "batch_size": 0, "estimator": "full_batch",
                "scale_loss": True, "reset_optimizer": False}
    assert {k: spec.hparams[k] for k in expected} == expected
    assert spec.steps == 500
    vrex = make_spec("cmnist_irm", "vrex", preset="irm-paper")
    assert vrex.hparams["penalty_weight"] == 91257.18613115903 and vrex.hparams["scale_loss"] is True
    dro = make_spec("cmnist_irm", "groupdro", preset="irm-paper")
    assert (dro.hparams["hidden_dim"], dro.hparams["lr"], dro.steps) == (390, 0.0004898536566546834, 500)
    erm = make_spec("cmnist_irm", "erm", preset="irm-paper")
    assert (erm.hparams["hidden_dim"], erm.hparams["l2"], erm.hparams["lr"]) == (256, 0.001, 0.001)
    gray = make_spec("cmnist_irm", "erm", preset="irm-paper-grayscale")
    assert (gray.hparams["hidden_dim"], gray.hparams["l2"], gray.hparams["lr"], gray.steps, gray.model) == (
        83, 0.0008602868865288383, 0.0028171488133821726, 100, "mlp_grayscale")


def test_every_method_declares_searchable_valid_hyperparameters():
    from invbench.hparams import draw

    for name in ("erm", "irm", "vrex", "mmrex", "groupdro"):
        cls = METHODS.get(name)
        assert re.search(r"\((19|20)\d\d\)", cls.__doc__), name  # cites its paper with the year
        for seed in range(5):
            for key, value in draw(cls.hparams, seed).items():
                assert cls.hparams[key].validate(key, value) == value


def method_blocks(listing: str) -> dict[str, str]:
    """`invbench list methods` output split into one text block per method."""
    blocks, current = {}, None
    for line in listing.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and ":" in line:
            current = line.strip().split(":", 1)[0]
            blocks[current] = ""
        elif current is not None:
            blocks[current] += line + "\n"
    return blocks


def test_list_methods_shows_the_four_with_their_hyperparameters(cli):
    out = cli("list", "methods")
    assert out.returncode == 0, out.stderr
    blocks = method_blocks(out.stdout)
    expected = {"erm": [], "irm": ["penalty_weight", "anneal_iters", "estimator", "scale_loss", "reset_optimizer"],
                "vrex": ["penalty_weight", "anneal_iters", "risk_reduction"], "mmrex": ["penalty_weight"],
                "groupdro": ["eta", "adjustment"]}
    for name, hparams in expected.items():
        for hp in hparams:
            assert f"    {hp} = " in blocks[name], (name, hp)
    protocols = cli("list", "protocols")
    assert protocols.returncode == 0, protocols.stderr
    irm_paper = protocols.stdout.split("\n  irm-paper:")[1].split("\n  irm-paper-grayscale:")[0]
    lines = {line.strip().split(":", 1)[0]: line for line in irm_paper.splitlines()}
    assert "batch_size=0; hidden_dim=256; l2=0.001; lr=0.001" in lines["every method"]  # the tuned ERM
    for name in ("irm", "vrex", "groupdro"):
        assert "hidden_dim=390" in lines[name] and "lr=0.0004898536566546834" in lines[name], name
