"""The methods' objectives against values derived by hand (numpy / math), never their own output.

Every closed form is checked for a single run (R = 1) and for a pack of three runs (R = 3)
whose hyperparameters and logits / labels differ: each run's value must be its own closed
form, whatever its pack-mates are.
"""

import math
import re

import numpy as np
import pytest
import torch

from invbench.errors import ConfigError
from invbench.hparams import TRAINING_HPARAMS
from invbench.registry import METHODS
from invbench.spec import make_spec
from invbench.tasks import Task


class IdentityPack:
    """A packed 'model' whose outputs are its inputs (R, n, out), so a test chooses every
    run's logits directly (these methods only call ``model(x)``)."""

    def __call__(self, x):
        assert x.dim() == 3, "inputs of a pack are (R, n, features)"
        return x


IDENTITY = IdentityPack()


def make(name, runs=None, n_envs=2, task="binary", env_sizes=None, **shared):
    """The method with its defaults, ``shared`` overrides for every run and one dict of
    per-run overrides per run in ``runs`` (None: a single run, given as one mapping)."""
    cls = METHODS.get(name)
    base = {k: v.default for k, v in {**TRAINING_HPARAMS, **cls.hparams}.items()}
    base.update(shared)
    hparams = base if runs is None else [{**base, **run} for run in runs]
    return cls(hparams, n_envs, Task(task), env_sizes=env_sizes)


def per_run(R, **values):
    """One dict per run from lists of values (the first R of each list)."""
    return [{name: column[r] for name, column in values.items()} for r in range(R)]


def batches_of(*envs):
    """Each environment: one (logits, labels) pair per run (all runs of one length). Inputs
    (R, n, k) as the IdentityPack's inputs, labels (R, n), float64."""
    out = []
    for runs in envs:
        x = torch.stack([torch.tensor(logits, dtype=torch.float64).reshape(len(labels), -1)
                         for logits, labels in runs])
        y = torch.tensor([labels for _, labels in runs], dtype=torch.float64)
        out.append((x, y))
    return out


def sigmoid(f):
    return 1.0 / (1.0 + np.exp(-np.asarray(f, dtype=float)))


def bce(f, y):
    p, y = sigmoid(f), np.asarray(y, dtype=float)
    return float(np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)))


# Run 0 of every environment is the single run's data; runs 1 and 2 have other logits and labels.
ENV_A = ([0.5, -1.0, 2.0, 0.0, -0.3, 1.5], [1, 0, 0, 1, 1, 1])
ENV_B = ([1.2, 0.7, -2.5, 0.1], [1, 0, 0, 0])
ENV_C = ([-0.4, 3.0, 0.9], [0, 1, 1])
RUNS_A = [ENV_A, ([-0.2, 1.1, 0.4, -2.0, 0.8, 0.05], [0, 1, 1, 0, 0, 1]),
          ([1.7, -0.6, 0.3, 2.2, -1.4, 0.9], [1, 1, 0, 1, 0, 0])]
RUNS_B = [ENV_B, ([0.3, -1.5, 2.1, -0.8], [0, 0, 1, 1]), ([-1.1, 0.6, 1.9, 0.2], [1, 0, 1, 0])]
RUNS_C = [ENV_C, ([1.3, -0.7, 0.25], [1, 0, 0]), ([0.0, -2.2, 1.6], [1, 0, 1])]

PACK_SIZES = pytest.mark.parametrize("R", [1, 3])


def envs(R, *runs_of_envs):
    """The first R runs of each environment: (per-env list of per-run data, batches)."""
    chosen = [runs[:R] for runs in runs_of_envs]
    return chosen, batches_of(*chosen)


def risks_of(chosen, r):
    return np.array([bce(*env[r]) for env in chosen])


def test_the_runs_data_differ():
    # a pack test whose runs had the same data could not see runs mixing
    for runs in (RUNS_A, RUNS_B, RUNS_C):
        values = [bce(*run) for run in runs]
        assert len(set(np.round(values, 6))) == 3


# ERM -------------------------------------------------------------------------------------

@PACK_SIZES
def test_erm_is_the_mean_of_the_environments_mean_losses(R):
    chosen, batches = envs(R, RUNS_A, RUNS_B)
    objective = make("erm", runs=[{}] * R).objective(IDENTITY, batches, step=0)
    assert objective.risk.shape == (R,)
    for r in range(R):
        # not the pooled mean: the environments have 6 and 4 examples
        assert objective.risk[r].item() == pytest.approx((bce(*chosen[0][r]) + bce(*chosen[1][r])) / 2, rel=1e-12)
        assert objective.env_losses[:, r].tolist() == pytest.approx(risks_of(chosen, r).tolist(), rel=1e-12)
    assert objective.penalty is None


def test_a_single_mapping_of_hyperparameters_is_a_pack_of_one():
    method = make("erm")
    assert method.runs == 1
    objective = method.objective(IDENTITY, batches_of([ENV_A], [ENV_B]), step=0)
    assert objective.risk.tolist() == pytest.approx([(bce(*ENV_A) + bce(*ENV_B)) / 2], rel=1e-12)


# IRMv1 -----------------------------------------------------------------------------------

def irm_gradient(f, y):
    """d/ds mean BCE(s f, y) at s = 1 = mean((sigmoid(f) - y) * f)."""
    return float(np.mean((sigmoid(f) - np.asarray(y)) * np.asarray(f)))


@PACK_SIZES
def test_irm_full_batch_penalty_is_the_squared_mean_of_residual_times_logit(R):
    chosen, batches = envs(R, RUNS_A, RUNS_B)
    # at step 3: run 0 annealed (weight 7), run 1 annealed (0.5), run 2 not yet (1.0, "not 0")
    method = make("irm", runs=per_run(R, penalty_weight=[7.0, 0.5, 30.0], anneal_iters=[0, 3, 4]),
                  estimator="full_batch")
    objective = method.objective(IDENTITY, batches, step=3)
    for r in range(R):
        (fa, ya), (fb, yb) = chosen[0][r], chosen[1][r]
        expected = (irm_gradient(fa, ya) ** 2 + irm_gradient(fb, yb) ** 2) / 2
        assert objective.penalty[r].item() == pytest.approx(expected, rel=1e-12)
        assert objective.risk[r].item() == pytest.approx((bce(fa, ya) + bce(fb, yb)) / 2, rel=1e-12)
    assert objective.penalty_weight.tolist() == [7.0, 0.5, 1.0][:R]


@PACK_SIZES
def test_irm_unbiased_penalty_multiplies_the_gradients_of_even_and_odd_halves(R):
    chosen, batches = envs(R, RUNS_A, RUNS_C)
    objective = make("irm", runs=[{}] * R, estimator="unbiased").objective(IDENTITY, batches, step=0)
    full = make("irm", runs=[{}] * R, estimator="full_batch").objective(IDENTITY, batches, 0)
    for r in range(R):
        f, y = map(np.asarray, chosen[0][r])
        g, h = map(np.asarray, chosen[1][r])
        expected = (irm_gradient(f[0::2], y[0::2]) * irm_gradient(f[1::2], y[1::2])
                    + irm_gradient(g[0::2], h[0::2]) * irm_gradient(g[1::2], h[1::2])) / 2
        assert objective.penalty[r].item() == pytest.approx(expected, rel=1e-12)
        # it can be negative, unlike the squared (biased) estimator
        assert expected != pytest.approx(full.penalty[r].item())


@PACK_SIZES
def test_irm_penalty_is_differentiable_with_the_closed_form_gradient(R):
    # one example: P(f) = ((sigmoid(f) - y) f)^2, dP/df = 2 r f (sigmoid'(f) f + r), r = sigmoid(f) - y
    examples = [(0.8, 1.0), (-1.3, 1.0), (0.4, 0.0)][:R]
    logits = torch.tensor([[[f0]] for f0, _ in examples], dtype=torch.float64, requires_grad=True)  # (R, 1, 1)
    labels = torch.tensor([[y0] for _, y0 in examples], dtype=torch.float64)  # (R, 1)
    penalty = make("irm", runs=[{}] * R, estimator="full_batch").penalty(logits, labels)
    assert penalty.shape == (R,)
    penalty.sum().backward()  # the runs are independent: each logit gets its own run's gradient
    for i, (f0, y0) in enumerate(examples):
        s = 1 / (1 + math.exp(-f0))
        r = s - y0
        assert logits.grad[i, 0, 0].item() == pytest.approx(2 * r * f0 * (s * (1 - s) * f0 + r), rel=1e-10)


@PACK_SIZES
def test_irm_penalty_for_multiclass_and_regression_tasks(R):
    logits = np.array([[[1.0, -0.5, 0.2], [0.3, 0.3, 2.0], [-1.0, 0.5, 0.0]],
                       [[0.1, 2.0, -0.7], [1.5, -1.0, 0.3], [0.0, 0.0, 0.9]],
                       [[-0.3, 0.8, 1.1], [2.2, 0.4, -0.5], [0.6, -1.2, 0.2]]])[:R]
    labels = np.array([[0, 2, 1], [1, 0, 2], [2, 2, 0]])[:R]
    softmax = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    # d/ds CE(s f, y) = mean(sum_k softmax_k f_k - f_y)
    picked = np.take_along_axis(logits, labels[:, :, None], axis=2)[:, :, 0]
    grad = np.mean((softmax * logits).sum(axis=2) - picked, axis=1)
    method = make("irm", runs=[{}] * R, task="multiclass", estimator="full_batch")
    got = method.penalty(torch.tensor(logits), torch.tensor(labels))
    assert got.tolist() == pytest.approx((grad ** 2).tolist(), rel=1e-12)

    f = np.array([[0.5, 2.0, -1.0], [1.0, -0.5, 0.25], [3.0, 0.0, -2.0]])[:R]
    y = np.array([[1.0, 1.0, 0.0], [0.5, 0.0, 1.0], [2.0, -1.0, 0.0]])[:R]
    # d/ds mean((s f - y)^2) = 2 mean((f - y) f)
    method = make("irm", runs=[{}] * R, task="regression", estimator="full_batch")
    got = method.penalty(torch.tensor(f)[:, :, None], torch.tensor(y))
    assert got.tolist() == pytest.approx(((2 * np.mean((f - y) * f, axis=1)) ** 2).tolist(), rel=1e-12)


@PACK_SIZES
def test_irm_unbiased_estimator_needs_two_examples(R):
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        make("irm", runs=[{}] * R, estimator="unbiased").penalty(torch.zeros(R, 1, 1), torch.zeros(R, 1))


# The anneal schedule (IRMv1, V-REx and MM-REx share it) ----------------------------------

SCHEDULED = pytest.mark.parametrize("name", ["irm", "vrex", "mmrex"])


@SCHEDULED
@PACK_SIZES
def test_penalty_weight_is_one_before_anneal_and_the_configured_weight_from_it(name, R):
    method = make(name, runs=per_run(R, penalty_weight=[500.0, 40.0, 2.0], anneal_iters=[10, 3, 11]),
                  n_envs=2, scale_loss=False)
    batches = envs(R, RUNS_A, RUNS_B)[1]
    steps = (0, 2, 3, 9, 10, 11)
    weights = [method.objective(IDENTITY, batches, step).penalty_weight.tolist() for step in steps]
    expected = {0: [1.0, 1.0, 1.0, 1.0, 500.0, 500.0],   # anneals at 10
                1: [1.0, 1.0, 40.0, 40.0, 40.0, 40.0],   # at 3
                2: [1.0, 1.0, 1.0, 1.0, 1.0, 2.0]}       # at 11
    for r in range(R):
        assert [w[r] for w in weights] == expected[r]
    assert method.objective(IDENTITY, batches, 10).divide_by.tolist() == [1.0] * R


@SCHEDULED
@PACK_SIZES
def test_scale_loss_divides_by_the_weight_only_when_it_exceeds_one(name, R):
    batches = envs(R, RUNS_A, RUNS_B)[1]
    method = make(name, runs=per_run(R, penalty_weight=[500.0, 0.5, 64.0], anneal_iters=[10, 0, 9]),
                  scale_loss=True)
    divisors = [method.objective(IDENTITY, batches, s).divide_by.tolist() for s in (8, 9, 10)]
    expected = {0: [1.0, 1.0, 500.0],  # 500 from step 10
                1: [1.0, 1.0, 1.0],    # 0.5 < 1: never divided
                2: [1.0, 64.0, 64.0]}  # 64 from step 9
    for r in range(R):
        assert [d[r] for d in divisors] == expected[r]


@SCHEDULED
@PACK_SIZES
def test_optimizer_reset_mask_is_each_runs_anneal_step_when_asked(name, R):
    method = make(name, runs=per_run(R, anneal_iters=[42, 7, 42]), reset_optimizer=True)
    assert method.optimizer_reset_mask(42).tolist() == [True, False, True][:R]
    assert method.optimizer_reset_mask(7).tolist() == [False, True, False][:R]
    assert method.optimizer_reset_mask(0).tolist() == [False] * R
    assert make(name, runs=per_run(R, anneal_iters=[42, 7, 42]), reset_optimizer=False).optimizer_reset_mask(42) is None


# V-REx and MM-REx ------------------------------------------------------------------------

@PACK_SIZES
def test_vrex_penalty_is_the_population_variance_of_the_environment_risks(R):
    chosen, batches = envs(R, RUNS_A, RUNS_B, RUNS_C)
    runs = per_run(R, penalty_weight=[10.0, 3.0, 0.5], anneal_iters=[0, 5, 1])
    objective = make("vrex", runs=runs, n_envs=3).objective(IDENTITY, batches, 0)
    summed = make("vrex", runs=runs, n_envs=3, risk_reduction="sum").objective(IDENTITY, batches, 0)
    for r in range(R):
        risks = risks_of(chosen, r)
        assert objective.penalty[r].item() == pytest.approx(np.var(risks), rel=1e-12)  # numpy: ddof=0
        assert objective.risk[r].item() == pytest.approx(risks.mean(), rel=1e-12)
        assert summed.risk[r].item() == pytest.approx(risks.sum(), rel=1e-12)


@PACK_SIZES
def test_vrex_two_environment_penalty_is_a_quarter_of_the_rex_codes_squared_difference(R):
    chosen, batches = envs(R, RUNS_A, RUNS_B)
    objective = make("vrex", runs=[{}] * R).objective(IDENTITY, batches, 0)
    for r in range(R):
        r1, r2 = risks_of(chosen, r)
        assert 4 * objective.penalty[r].item() == pytest.approx((r1 - r2) ** 2, rel=1e-12)


# Run 0 of each case is the single run's weight; the pack's other runs take other weights.
@pytest.mark.parametrize("weights", [(0.0, 25.0, 0.4), (0.4, 1.0, 0.0), (1.0, 0.0, 25.0), (25.0, 0.4, 1.0)])
@PACK_SIZES
def test_mmrex_equals_the_papers_minimax_form(weights, R):
    chosen, batches = envs(R, RUNS_A, RUNS_B, RUNS_C)
    objective = make("mmrex", runs=per_run(R, penalty_weight=weights), n_envs=3, anneal_iters=0).objective(
        IDENTITY, batches, 0)
    for r in range(R):
        risks = risks_of(chosen, r)
        lam = (1 - weights[r]) / 3
        expected = (1 - 3 * lam) * risks.max() + lam * risks.sum()
        total = objective.risk[r].item() + weights[r] * objective.penalty[r].item()
        assert total == pytest.approx(expected, rel=1e-12)
        assert objective.penalty_weight[r].item() == pytest.approx(weights[r], rel=1e-7)
        assert objective.logs["lambda_min"][r].item() == pytest.approx(lam, rel=1e-6, abs=1e-7)


# Group DRO -------------------------------------------------------------------------------

@PACK_SIZES
def test_groupdro_update_is_the_exponentiated_gradient_closed_form(R):
    etas = [0.3, 0.05, 1.2][:R]
    chosen, batches = envs(R, RUNS_A, RUNS_B, RUNS_C)
    method = make("groupdro", runs=per_run(R, eta=etas), n_envs=3)
    q = np.ones((R, 3)) / 3
    for step in range(2):
        objective = method.objective(IDENTITY, batches, step)
        for r in range(R):
            risks = risks_of(chosen, r)
            q[r] = q[r] * np.exp(etas[r] * risks)
            q[r] = q[r] / q[r].sum()
            # the updated weights weigh this step's losses
            assert objective.risk[r].item() == pytest.approx(float(q[r] @ risks), rel=1e-12)
            assert objective.logs["q1"][r].item() == pytest.approx(q[r, 1], rel=1e-12)
        np.testing.assert_allclose(method.q.numpy(), q, rtol=1e-12)


@PACK_SIZES
def test_groupdro_adjustment_adds_c_over_sqrt_n_in_the_update_only(R):
    etas, cs, sizes = [0.5, 0.2, 1.0][:R], [2.0, 0.0, 5.0][:R], [100, 25]
    chosen, batches = envs(R, RUNS_A, RUNS_B)
    method = make("groupdro", runs=per_run(R, eta=etas, adjustment=cs), env_sizes=sizes)
    objective = method.objective(IDENTITY, batches, 0)
    for r in range(R):
        risks = risks_of(chosen, r)
        q = np.exp(etas[r] * (risks + cs[r] / np.sqrt(sizes)))
        q /= q.sum()
        np.testing.assert_allclose(method.q[r].numpy(), q, rtol=1e-12)
        assert objective.risk[r].item() == pytest.approx(float(q @ risks), rel=1e-12)


@PACK_SIZES
def test_groupdro_weights_are_method_state(R):
    runs = per_run(R, eta=[1.0, 0.1, 3.0])
    method = make("groupdro", runs=runs)
    method.objective(IDENTITY, envs(R, RUNS_A, RUNS_B)[1], 0)
    saved = method.state_dict()
    assert saved["q"].shape == (R, 2)
    fresh = make("groupdro", runs=runs)
    assert not torch.equal(fresh.q, method.q)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.q, method.q)
    with pytest.raises(ConfigError, match=re.escape(f"expected ({R}, 3)")):
        make("groupdro", runs=runs, n_envs=3).load_state_dict(saved)


@PACK_SIZES
def test_groupdro_adjustment_needs_the_environment_sizes(R):
    # one run of a pack asking for it is enough
    adjustments = [1.0] if R == 1 else [0.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match="env_sizes"):
        make("groupdro", runs=per_run(R, adjustment=adjustments), env_sizes=None)


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
