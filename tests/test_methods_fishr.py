"""Fishr against values derived independently: per-sample gradients by finite differences of
each example's own loss in numpy (no closed form, no torch), their variances, the moving
average, the distance, the schedule; the penalty's gradient by finite differences; resume;
the spurious-feature test through the runner.

Every value is checked for a single run (R = 1) and a pack of three runs (R = 3) whose
hyperparameters, weights and data differ."""

import numpy as np
import pytest
import torch
from torch import nn

from invbench.errors import ConfigError
from invbench.hparams import TRAINING_HPARAMS
from invbench.models import MLP, Linear
from invbench.packed import PackedModel
from invbench.registry import METHODS
from invbench.runner import CHECKPOINT, run
from invbench.tasks import Task

from test_methods_invariance import spurious_dataset, spurious_share  # noqa: F401  (the fixture)
from test_resume_methods import INTERRUPT_AT, interrupted_then_resumed, metrics, spec_for

PACK_SIZES = pytest.mark.parametrize("R", [1, 3])
TASKS = {"binary": 1, "multiclass": 3, "regression": 1}  # task -> outputs
D = 3  # features (= inputs of the linear model)
ENV_SIZES = (5, 7, 4)


def make(runs, n_envs=2, task="binary", **shared):
    cls = METHODS.get("fishr")
    base = {k: v.default for k, v in {**TRAINING_HPARAMS, **cls.hparams}.items()}
    base.update(shared)
    return cls([{**base, **run} for run in runs], n_envs, Task(task))


def per_run(R, **values):
    return [{name: column[r] for name, column in values.items()} for r in range(R)]


# The numpy oracle ------------------------------------------------------------------------

def sample_loss(task, f, y):
    """One example's loss from its logits f (out,) in numpy: what invbench.tasks computes."""
    if task == "binary":
        return np.logaddexp(0.0, f[0]) - y * f[0]  # BCE with logits
    if task == "multiclass":
        return np.logaddexp.reduce(f) - f[int(y)]
    return (f[0] - y) ** 2


def per_sample_gradients(task, theta, z, y, h=1e-5):
    """(n, P): d l_i / d theta by central differences, theta (out, d + 1) = [W | b], f = W z + b."""
    grads = np.zeros((len(y), theta.size))
    for i in range(len(y)):
        for k in range(theta.size):
            step = np.zeros(theta.size)
            step[k] = h
            up, down = theta + step.reshape(theta.shape), theta - step.reshape(theta.shape)
            loss = lambda t: sample_loss(task, t[:, :-1] @ z[i] + t[:, -1], y[i])
            grads[i, k] = (loss(up) - loss(down)) / (2 * h)
    return grads


def penalty_of(smoothed, distance):
    """From s_e (E, P): the squared distances to the mean over environments, mean or sum."""
    squares = (smoothed - smoothed.mean(axis=0)) ** 2
    return squares.mean() if distance == "mean" else squares.sum()


def problem(task, R, n_envs=2, seed=0):
    """Per run: theta (out, d + 1) and per environment (z, y), all different between runs."""
    out = TASKS[task]
    rng = np.random.RandomState(seed)
    runs = []
    for _ in range(R):
        theta = rng.normal(size=(out, D + 1))
        envs = []
        for n in ENV_SIZES[:n_envs]:
            z = rng.normal(size=(n, D)) * rng.uniform(0.5, 2.0)  # environments of other scales
            y = {"binary": lambda: rng.randint(0, 2, n), "multiclass": lambda: rng.randint(0, 3, n),
                 "regression": lambda: rng.normal(size=n)}[task]().astype(float)
            envs.append((z, y))
        runs.append((theta, envs))
    return runs


def linear_pack(runs):
    """The pack of linear models with each run's theta, float64 (its features are its inputs)."""
    out = runs[0][0].shape[0]
    model = PackedModel([Linear(D, out) for _ in runs]).double()
    for r, (theta, _) in enumerate(runs):
        model.load_run_state_dict(r, {"linear.weight": torch.tensor(theta[:, :-1]),
                                      "linear.bias": torch.tensor(theta[:, -1])})
    return model


def batches(runs):
    n_envs = len(runs[0][1])
    return [(torch.tensor(np.stack([envs[e][0] for _, envs in runs])),
             torch.tensor(np.stack([envs[e][1] for _, envs in runs]))) for e in range(n_envs)]


def variances_of(task, runs):
    """(R, E, P): each run's centred per-sample gradient variance in each environment."""
    return np.array([[per_sample_gradients(task, theta, z, y).var(axis=0) for z, y in envs]
                     for theta, envs in runs])


# The variances and the penalty -----------------------------------------------------------

@pytest.mark.parametrize("task", list(TASKS))
@PACK_SIZES
def test_the_variances_are_those_of_the_per_sample_gradients(task, R):
    runs = problem(task, R, n_envs=3, seed=R)
    # ema 0: the moving average is this step's variance itself
    method = make(per_run(R, ema=[0.0, 0.0, 0.0]), n_envs=3, task=task)
    objective = method.objective(linear_pack(runs), batches(runs), step=0)
    expected = variances_of(task, runs)
    assert method.averages.shape == expected.shape == (R, 3, TASKS[task] * (D + 1))
    np.testing.assert_allclose(method.averages.numpy(), expected, rtol=1e-6, atol=1e-9)
    for r in range(R):
        assert objective.penalty[r].item() == pytest.approx(penalty_of(expected[r], "mean"), rel=1e-6)
        risks = [np.mean([sample_loss(task, runs[r][0][:, :-1] @ zi + runs[r][0][:, -1], yi)
                          for zi, yi in zip(z, y)]) for z, y in runs[r][1]]
        assert objective.risk[r].item() == pytest.approx(np.mean(risks), rel=1e-12)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("distance", ["mean", "sum"])
@PACK_SIZES
def test_the_moving_average_and_the_penalty_over_two_steps(task, distance, R):
    emas = [0.95, 0.5, 0.0][:R]
    first, second = problem(task, R, seed=10 + R), problem(task, R, seed=20 + R)
    # the model stays: the second step has other data only
    second = [(first[r][0], second[r][1]) for r in range(R)]
    method = make(per_run(R, ema=emas), task=task, distance=distance)
    model = linear_pack(first)
    method.objective(model, batches(first), step=0)
    objective = method.objective(model, batches(second), step=1)
    v1, v2 = variances_of(task, first), variances_of(task, second)
    for r, ema in enumerate(emas):
        m1 = (1 - ema) * v1[r]  # from zero
        m2 = ema * m1 + (1 - ema) * v2[r]
        np.testing.assert_allclose(method.averages[r].numpy(), m2, rtol=1e-6, atol=1e-10)
        assert objective.penalty[r].item() == pytest.approx(penalty_of(m2 / (1 - ema), distance), rel=1e-6)


@PACK_SIZES
def test_the_features_are_the_mlps_last_hidden_layer(R):
    """Through an MLP: the per-sample gradients are those of its last layer on its features."""
    torch.manual_seed(R)
    models = [MLP(D, 4, 1) for _ in range(R)]
    model = PackedModel(models).double()
    runs = problem("binary", R, seed=30 + R)
    method = make(per_run(R, ema=[0.0] * 3))
    method.objective(model, batches(runs), step=0)
    for r in range(R):
        state = {k: v.numpy() for k, v in model.run_state_dict(r).items()}
        theta = np.concatenate([state["net.4.weight"], state["net.4.bias"][:, None]], axis=1)
        relu = lambda v: np.maximum(v, 0.0)
        features = [(relu(relu(z @ state["net.0.weight"].T + state["net.0.bias"]) @ state["net.2.weight"].T
                          + state["net.2.bias"]), y) for z, y in runs[r][1]]
        expected = [per_sample_gradients("binary", theta, f, y).var(axis=0) for f, y in features]
        np.testing.assert_allclose(method.averages[r].numpy(), np.array(expected), rtol=1e-6, atol=1e-10)


@PACK_SIZES
def test_the_penalty_gradient_matches_finite_differences(R):
    """Through featurizer and classifier alike: the residuals d l / d f stay in the graph."""
    torch.manual_seed(100 + R)
    model = PackedModel([MLP(2, 3, 1) for _ in range(R)]).double()
    with torch.no_grad():  # non-zero biases: with zero ones an example whose first layer is all
        for p in model.parameters():  # off sits on the second ReLU's kink (finite differences average it)
            p.normal_()
    rng = np.random.RandomState(R)
    data = [(torch.tensor(rng.normal(size=(R, n, 2))), torch.tensor(rng.randint(0, 2, (R, n)).astype(float)))
            for n in (6, 5)]
    method = make([{"ema": 0.0}] * R)  # no state: the penalty is a function of the parameters

    def penalty():
        return method.objective(model, data, step=0).penalty

    penalty().sum().backward()
    h = 1e-6
    for name, p in model.packed_parameters().items():
        for index in np.ndindex(*p.shape):
            p.data[index] += h  # not under no_grad: the penalty differentiates the loss itself
            up = penalty()[index[0]].item()
            p.data[index] -= 2 * h
            down = penalty()[index[0]].item()
            p.data[index] += h
            assert p.grad[index].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9), (name, index)
    assert model.packed_parameters()["net.0.weight"].grad.abs().sum() > 0  # the featurizer is trained


# The schedule ----------------------------------------------------------------------------

@PACK_SIZES
def test_the_weight_is_zero_before_the_anneal_step_and_lambda_from_it(R):
    runs = problem("binary", R)
    method = make(per_run(R, penalty_weight=[1000.0, 40.0, 2.5], anneal_iters=[10, 3, 0]))
    model, data = linear_pack(runs), batches(runs)
    weights = [method.objective(model, data, step).penalty_weight.tolist() for step in (0, 2, 3, 9, 10)]
    expected = {0: [0.0, 0.0, 0.0, 0.0, 1000.0], 1: [0.0, 0.0, 40.0, 40.0, 40.0], 2: [2.5] * 5}
    for r in range(R):
        assert [w[r] for w in weights] == expected[r]
    assert method.objective(model, data, 10).divide_by.tolist() == [1.0] * R  # DomainBed does not divide
    assert method.optimizer_reset_mask(10).tolist() == [True, False, False][:R]
    assert method.optimizer_reset_mask(3).tolist() == [False, True, False][:R]
    assert make(per_run(R, anneal_iters=[10, 3, 0]), reset_optimizer=False).optimizer_reset_mask(10) is None


@PACK_SIZES
def test_the_colored_mnist_codes_schedule_weighs_one_before_and_divides(R):
    runs = problem("binary", R)
    method = make(per_run(R, penalty_weight=[91257.18613115903, 0.5, 64.0], anneal_iters=[190, 0, 5]),
                  warmup_weight=1.0, scale_loss=True, reset_optimizer=False)
    model, data = linear_pack(runs), batches(runs)
    at = {s: method.objective(model, data, s) for s in (4, 5, 190)}
    expected = {0: ([1.0, 1.0, 91257.18613115903], [1.0, 1.0, 91257.18613115903]),
                1: ([0.5, 0.5, 0.5], [1.0, 1.0, 1.0]),
                2: ([1.0, 64.0, 64.0], [1.0, 64.0, 64.0])}
    for r in range(R):
        assert [at[s].penalty_weight[r].item() for s in (4, 5, 190)] == expected[r][0]
        assert [at[s].divide_by[r].item() for s in (4, 5, 190)] == expected[r][1]
    assert method.optimizer_reset_mask(190) is None


def test_defaults_and_searches_are_domainbeds():
    from invbench.hparams import LogUniform, RandInt, Uniform, draw

    hparams = METHODS.get("fishr").hparams
    # DomainBed's hparams_registry: lambda 1000, 10**U(1, 4); penalty_anneal_iters 1500,
    # int(U(0, 5000)); ema 0.95, U(0.90, 0.99)
    assert (hparams["penalty_weight"].default, hparams["penalty_weight"].search) == (1000.0, LogUniform(1, 4))
    assert (hparams["anneal_iters"].default, hparams["anneal_iters"].search) == (1500, RandInt(0, 5000))
    assert (hparams["ema"].default, hparams["ema"].search) == (0.95, Uniform(0.90, 0.99))
    assert (hparams["warmup_weight"].default, hparams["distance"].default) == (0.0, "mean")
    assert (hparams["reset_optimizer"].default, hparams["scale_loss"].default) == (True, False)
    for seed in range(20):
        for key, value in draw(hparams, seed).items():
            assert hparams[key].validate(key, value) == value


def test_a_weight_that_never_applies_is_reported():
    cls = METHODS.get("fishr")
    defaults = {k: v.default for k, v in cls.hparams.items()}
    assert "never applies" in cls.check_hparams(defaults, steps=500)[0]  # anneal 1500
    assert cls.check_hparams({**defaults, "anneal_iters": 100}, steps=500) == []


# The classifier, the state -----------------------------------------------------------------

def test_a_classifier_that_is_not_one_linear_layer_is_refused():
    class TwoLayerHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.featurizer = nn.Linear(D, 4)
            self.classifier = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))

    with pytest.raises(ConfigError, match="one linear layer.*classifier.0.weight"):
        make([{}]).bind(PackedModel([TwoLayerHead()]))


@PACK_SIZES
def test_a_model_without_bias_has_no_bias_entries(R):
    runs = problem("regression", R, seed=3)
    model = PackedModel([Linear(D, 1, bias=False) for _ in range(R)]).double()
    for r, (theta, _) in enumerate(runs):
        model.load_run_state_dict(r, {"linear.weight": torch.tensor(theta[:, :-1])})
    method = make([{"ema": 0.0}] * R, task="regression")
    method.bind(model)
    assert method.averages.shape == (R, 2, D)
    method.objective(model, batches(runs), 0)
    for r, (theta, envs) in enumerate(runs):
        theta = np.concatenate([theta[:, :-1], np.zeros((1, 1))], axis=1)  # b = 0, not a parameter
        expected = [per_sample_gradients("regression", theta, z, y).var(axis=0)[:D] for z, y in envs]
        np.testing.assert_allclose(method.averages[r].numpy(), np.array(expected), rtol=1e-6, atol=1e-10)


@PACK_SIZES
def test_the_moving_averages_are_method_state(R):
    runs = problem("multiclass", R)
    method = make(per_run(R, ema=[0.9, 0.95, 0.99]), task="multiclass")
    method.objective(linear_pack(runs), batches(runs), 0)
    saved = method.state_dict()
    assert saved["variance_averages"].shape == (R, 2, 3 * (D + 1))
    fresh = make(per_run(R, ema=[0.9, 0.95, 0.99]), task="multiclass")
    fresh.bind(linear_pack(runs))
    assert not torch.equal(fresh.state_dict()["variance_averages"], saved["variance_averages"])
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.state_dict()["variance_averages"], saved["variance_averages"])
    other = make([{}] * R, n_envs=3, task="multiclass")
    other.bind(linear_pack(problem("multiclass", R, n_envs=3)))
    with pytest.raises(ConfigError, match=r"expected \(%d, 3, 12\)" % R):
        other.load_state_dict(saved)


# Through the runner ----------------------------------------------------------------------

@pytest.mark.parametrize("anneal", [INTERRUPT_AT - 5, INTERRUPT_AT, INTERRUPT_AT + 5])
def test_resume_gives_the_metrics_of_an_uninterrupted_run(tmp_path, monkeypatch, one_torch_thread, anneal):
    spec = spec_for("fishr", anneal_iters=anneal, penalty_weight=50.0, ema=0.9)
    full = run(spec, tmp_path / "full")
    resumed = interrupted_then_resumed(spec, tmp_path / "resumed", monkeypatch)
    assert metrics(resumed) == metrics(full)
    saved = torch.load(full / CHECKPOINT, weights_only=False)["method"]["variance_averages"]
    assert saved.abs().sum() > 0
    # The comparison has teeth: a resume that forgot the moving averages gives other numbers.
    from invbench.methods.fishr import Fishr

    monkeypatch.setattr(Fishr, "load_state_dict", lambda self, state: None)
    forgetful = interrupted_then_resumed(spec, tmp_path / "forgetful", monkeypatch)
    assert metrics(forgetful) != metrics(full)


def test_the_optimizer_is_recreated_at_the_anneal_step(tmp_path, one_torch_thread):
    # Adam counts its updates: after a reset at step 15 of 40 it has made 25.
    for reset, expected in [(True, 40 - 15), (False, 40)]:
        run_dir = run(spec_for("fishr", anneal_iters=15, reset_optimizer=reset), tmp_path / str(reset))
        state = torch.load(run_dir / CHECKPOINT, weights_only=False)["optimizer"]
        assert int(state["step"]) == expected


@pytest.mark.parametrize("trial", [0, 1, 2])
def test_fishr_puts_clearly_less_weight_on_the_spurious_feature(spurious_dataset, tmp_path, trial):  # noqa: F811
    # The linear model: its features are its inputs, so the classifier's per-sample gradients
    # (residual times input) carry both features and the penalty can act on the spurious one.
    erm = spurious_share(spurious_dataset, "erm", trial, tmp_path)
    assert erm > 0.4
    share = spurious_share(spurious_dataset, "fishr", trial, tmp_path, penalty_weight=1000.0, anneal_iters=100)
    assert share < erm - 0.25, (share, erm)
