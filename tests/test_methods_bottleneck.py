"""IB-ERM, IB-IRM and spectral decoupling: objectives against numpy, their schedules, resume,
packs, and the spurious-feature test.

Every objective is checked for a single run (R = 1) and for a pack of three runs (R = 3)
whose hyperparameters and data differ; the features and logits are chosen by the test (a
pack whose features are its inputs and whose classifier is a fixed matrix) or computed by
hand from a real packed MLP's weights.
"""

import math
import re
import warnings

import numpy as np
import pytest
import torch
from test_methods import bce, irm_gradient, make, per_run
from test_methods_invariance import SpuriousLinear
from test_packs import metrics as metrics_of
from test_resume_methods import INTERRUPT_AT, interrupted_then_resumed

from invbench.errors import ConfigError
from invbench.method import compose_loss
from invbench.models import MLP
from invbench.packed import PackedModel
from invbench.protocol import PROTOCOLS, Protocol, register
from invbench.registry import DATASETS
from invbench.runner import CHECKPOINT, load_records, run, run_pack
from invbench.spec import HParamWarning, make_spec

PACK_SIZES = pytest.mark.parametrize("R", [1, 3])

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FeaturePack:
    """A packed 'model' whose features are its inputs (R, n, d), chosen by the test, and
    whose classifier is the fixed matrix ``readout`` (d, out): logits = features @ readout."""

    def __init__(self, readout):
        self.readout = torch.tensor(readout, dtype=torch.float64)

    def features(self, x):
        assert x.dim() == 3, "inputs of a pack are (R, n, features)"
        return x

    def classify(self, z):
        return z @ self.readout

    def __call__(self, x):
        return self.classify(self.features(x))


READOUT = [[0.7], [-1.3]]  # two features, one logit


def feature_data(R, sizes=(6, 4), d=2, seed=0):
    """Per environment: features (R, n_e, d) and 0/1 labels (R, n_e), different for every
    run and environment (numpy arrays). The features require grad like a featurizer's."""
    rng = np.random.default_rng(seed)
    data = [(rng.normal(size=(R, n, d)) * rng.uniform(0.5, 2.0, size=(R, 1, d)),
             rng.integers(0, 2, size=(R, n)).astype(float)) for n in sizes]
    batches = [(torch.tensor(x, requires_grad=True), torch.tensor(y)) for x, y in data]
    return data, batches


def ib_penalty(representations):
    """Mean over environments of the mean over coordinates of the unbiased batch variance."""
    return float(np.mean([np.var(z, axis=0, ddof=1).mean() for z in representations]))


def irm_unbiased(f, y):
    return irm_gradient(f[0::2], y[0::2]) * irm_gradient(f[1::2], y[1::2])


class NoOptimizer:
    """Records the optimizer calls of Method.apply and changes nothing."""

    def __init__(self):
        self.resets = []

    def reset(self, runs):
        self.resets.append(runs.tolist())

    def zero_grad(self):
        pass

    def step(self, active):
        pass


def updated_loss(method, model, batches, step):
    """The per-run loss that ``method.update`` minimises at ``step`` (l2 = 0)."""
    R = method.runs
    result = method.update(model, batches, step, NoOptimizer(), torch.zeros(R, dtype=torch.float64),
                           torch.ones(R, dtype=torch.bool))
    return result.loss, result.objective


# IB-ERM ----------------------------------------------------------------------------------

@PACK_SIZES
@pytest.mark.parametrize("bottleneck", ["features", "logits"])
def test_iberm_is_the_mean_risk_plus_the_variance_of_the_representation(R, bottleneck):
    data, batches = feature_data(R)
    model = FeaturePack(READOUT)
    method = make("iberm", runs=per_run(R, ib_weight=[3.0, 0.25, 40.0], ib_anneal_iters=[0, 2, 5]),
                  bottleneck=bottleneck)
    objective = method.objective(model, batches, step=2)
    readout = np.array(READOUT)
    for r in range(R):
        features = [x[r] for x, _ in data]
        logits = [z @ readout for z in features]
        risks = [bce(f[:, 0], y[r]) for f, (_, y) in zip(logits, data)]
        assert objective.risk[r].item() == pytest.approx(np.mean(risks), rel=1e-12)
        expected = ib_penalty(features if bottleneck == "features" else logits)
        assert objective.penalty[r].item() == pytest.approx(expected, rel=1e-12)
    # the two representations give different penalties: the choice is seen
    other = make("iberm", runs=[{}] * R, bottleneck="logits" if bottleneck == "features" else "features")
    assert not torch.allclose(other.objective(model, batches, 2).penalty, objective.penalty)
    # weight 0 before each run's anneal step, its ib_weight from it (run 2 anneals at 5)
    assert objective.penalty_weight.tolist() == [3.0, 0.25, 0.0][:R]


@PACK_SIZES
def test_iberm_penalises_a_real_mlps_hidden_features_computed_by_hand(R):
    torch.manual_seed(0)
    mlps = [MLP(3, 4, 1) for _ in range(R)]
    pack = PackedModel(mlps).double()
    with torch.no_grad():  # non-zero biases, so that they count too
        for tensor in pack.packed_parameters().values():
            tensor.add_(0.1 * torch.randn_like(tensor))
    rng = np.random.default_rng(1)
    data = [(rng.normal(size=(R, n, 3)), rng.integers(0, 2, size=(R, n)).astype(float)) for n in (5, 8)]
    batches = [(torch.tensor(x), torch.tensor(y)) for x, y in data]
    features_objective = make("iberm", runs=[{}] * R).objective(pack, batches, 0)
    logits_objective = make("iberm", runs=[{}] * R, bottleneck="logits").objective(pack, batches, 0)
    relu = lambda a: np.maximum(a, 0.0)
    for r in range(R):
        w = {name: t.numpy() for name, t in pack.run_state_dict(r).items()}
        hidden = [relu(relu(x[r] @ w["net.0.weight"].T + w["net.0.bias"]) @ w["net.2.weight"].T + w["net.2.bias"])
                  for x, _ in data]
        logits = [h @ w["net.4.weight"].T + w["net.4.bias"] for h in hidden]
        risks = [bce(f[:, 0], y[r]) for f, (_, y) in zip(logits, data)]
        assert features_objective.risk[r].item() == pytest.approx(np.mean(risks), rel=1e-10)
        assert features_objective.penalty[r].item() == pytest.approx(ib_penalty(hidden), rel=1e-10)
        assert logits_objective.penalty[r].item() == pytest.approx(ib_penalty(logits), rel=1e-10)


@PACK_SIZES
def test_iberm_schedule_and_optimizer_reset_per_run(R):
    method = make("iberm", runs=per_run(R, ib_weight=[500.0, 40.0, 2.0], ib_anneal_iters=[10, 3, 11]))
    batches = feature_data(R)[1]
    model = FeaturePack(READOUT)
    steps = (0, 2, 3, 9, 10, 11)
    weights = [method.objective(model, batches, step).penalty_weight.tolist() for step in steps]
    expected = {0: [0.0, 0.0, 0.0, 0.0, 500.0, 500.0],  # anneals at 10
                1: [0.0, 0.0, 40.0, 40.0, 40.0, 40.0],  # at 3
                2: [0.0, 0.0, 0.0, 0.0, 0.0, 2.0]}      # at 11
    for r in range(R):
        assert [w[r] for w in weights] == expected[r]
    assert method.optimizer_reset_mask(10).tolist() == [True, False, False][:R]
    assert method.optimizer_reset_mask(3).tolist() == [False, True, False][:R]
    assert method.optimizer_reset_mask(0).tolist() == [False] * R
    assert make("iberm", runs=[{}] * R, reset_optimizer=False).optimizer_reset_mask(500) is None


# IB-IRM ----------------------------------------------------------------------------------

@PACK_SIZES
@pytest.mark.parametrize("estimator", ["unbiased", "full_batch"])
def test_ibirm_loss_is_risk_plus_irm_penalty_plus_variance_divided_when_asked(R, estimator):
    data, batches = feature_data(R, sizes=(6, 8), seed=2)
    model = FeaturePack(READOUT)
    # at step 4: run 0 both annealed (irm 500 > 1: divided), run 1 IRM not yet (1.0) and IB
    # annealed, run 2 neither (IRM 1.0, IB 0)
    runs = per_run(R, penalty_weight=[500.0, 0.5, 30.0], anneal_iters=[1, 9, 5],
                   ib_weight=[7.0, 0.2, 3.0], ib_anneal_iters=[4, 0, 6])
    method = make("ibirm", runs=runs, estimator=estimator, scale_loss=True)
    loss, objective = updated_loss(method, model, batches, step=4)
    readout = np.array(READOUT)
    weights, ib_weights = [500.0, 1.0, 1.0], [7.0, 0.2, 0.0]
    for r in range(R):
        features = [x[r] for x, _ in data]
        logits = [(z @ readout)[:, 0] for z in features]
        labels = [y[r] for _, y in data]
        risk = np.mean([bce(f, y) for f, y in zip(logits, labels)])
        if estimator == "unbiased":
            irm = np.mean([irm_unbiased(f, y) for f, y in zip(logits, labels)])
        else:
            irm = np.mean([irm_gradient(f, y) ** 2 for f, y in zip(logits, labels)])
        ib = ib_penalty(features)
        assert objective.risk[r].item() == pytest.approx(risk, rel=1e-12)
        assert objective.penalty[r].item() == pytest.approx(irm, rel=1e-12)
        assert objective.logs["ib_penalty"][r].item() == pytest.approx(ib, rel=1e-12)
        assert objective.penalty_weight[r].item() == weights[r]
        assert objective.logs["ib_weight"][r].item() == ib_weights[r]
        divide_by = max(weights[r], 1.0)
        assert loss[r].item() == pytest.approx((risk + weights[r] * irm + ib_weights[r] * ib) / divide_by, rel=1e-12)


@PACK_SIZES
def test_ibirm_update_adds_the_bottleneck_to_the_simple_paths_loss(R):
    # the IB term is what update adds to compose_loss: zero weight, same loss
    data, batches = feature_data(R, seed=3)
    model = FeaturePack(READOUT)
    annealed = make("ibirm", runs=per_run(R, ib_weight=[2.0, 5.0, 0.1]), ib_anneal_iters=0)
    off = make("ibirm", runs=per_run(R, ib_weight=[2.0, 5.0, 0.1]), ib_anneal_iters=1)
    loss_on, objective = updated_loss(annealed, model, batches, 0)
    loss_off, _ = updated_loss(off, model, batches, 0)
    simple = compose_loss(objective, model, torch.zeros(R, dtype=torch.float64))
    assert torch.equal(loss_off, simple.detach())
    ib = objective.logs["ib_penalty"].detach()
    assert torch.allclose(loss_on - loss_off, torch.tensor([2.0, 5.0, 0.1][:R], dtype=torch.float64) * ib)


@PACK_SIZES
def test_ibirm_two_schedules_and_a_reset_at_either_anneal_step(R):
    runs = per_run(R, penalty_weight=[500.0, 40.0, 2.0], anneal_iters=[10, 3, 11],
                   ib_weight=[7.0, 0.5, 30.0], ib_anneal_iters=[2, 10, 11])
    method = make("ibirm", runs=runs, reset_optimizer=True)
    batches = feature_data(R)[1]
    model = FeaturePack(READOUT)
    steps = (0, 2, 3, 9, 10, 11)
    objectives = [method.objective(model, batches, step) for step in steps]
    irm = {0: [1.0, 1.0, 1.0, 1.0, 500.0, 500.0], 1: [1.0, 1.0, 40.0, 40.0, 40.0, 40.0],
           2: [1.0, 1.0, 1.0, 1.0, 1.0, 2.0]}  # 1.0 before the IRM anneal step
    ib = {0: [0.0, 7.0, 7.0, 7.0, 7.0, 7.0], 1: [0.0, 0.0, 0.0, 0.0, 0.5, 0.5],
          2: [0.0, 0.0, 0.0, 0.0, 0.0, 30.0]}  # 0 before the IB anneal step
    for r in range(R):
        assert [o.penalty_weight[r].item() for o in objectives] == irm[r]
        assert [o.logs["ib_weight"][r].item() for o in objectives] == ib[r]
    resets = {step: method.optimizer_reset_mask(step).tolist() for step in range(13)}
    due = {0: {2, 10}, 1: {3, 10}, 2: {11}}  # each run's IRM and IB anneal steps
    for step, mask in resets.items():
        assert mask == [step in due[r] for r in range(R)], step
    assert make("ibirm", runs=runs, reset_optimizer=False).optimizer_reset_mask(10) is None


# Spectral decoupling ---------------------------------------------------------------------

@PACK_SIZES
@pytest.mark.parametrize("task, outputs", [("binary", 1), ("multiclass", 3)])
def test_sd_penalty_is_the_mean_squared_logit_of_all_environments_pooled(R, task, outputs):
    rng = np.random.default_rng(4)
    sizes = (6, 3)  # unequal: the pooled mean is not the mean of the environments' means
    logits = [rng.normal(size=(R, n, outputs)) * 2 for n in sizes]
    labels = [rng.integers(0, 2 if task == "binary" else outputs, size=(R, n)).astype(float) for n in sizes]
    batches = [(torch.tensor(f), torch.tensor(y)) for f, y in zip(logits, labels)]
    identity = lambda x: x
    regs = [0.1, 1e-3, 2.5]
    objective = make("sd", runs=per_run(R, sd_reg=regs), task=task).objective(identity, batches, 0)
    for r in range(R):
        pooled = np.concatenate([f[r] for f in logits])
        assert objective.penalty[r].item() == pytest.approx(np.mean(pooled ** 2), rel=1e-12)
        assert objective.penalty[r].item() != pytest.approx(np.mean([np.mean(f[r] ** 2) for f in logits]))
        if task == "binary":
            risks = [bce(f[r][:, 0], y[r]) for f, y in zip(logits, labels)]
        else:
            risks = []
            for f, y in zip(logits, labels):
                log_softmax = f[r] - np.log(np.exp(f[r]).sum(axis=1, keepdims=True))
                risks.append(-np.mean(log_softmax[np.arange(len(y[r])), y[r].astype(int)]))
        assert objective.risk[r].item() == pytest.approx(np.mean(risks), rel=1e-12)
        assert objective.penalty_weight[r].item() == regs[r]
        assert objective.divide_by[r].item() == 1.0


@PACK_SIZES
def test_sd_switch_to_the_authors_form_per_run(R):
    # -1: DomainBed's constant weight; from sd_anneal_iters on: sd_reg * (risk + penalty)
    method = make("sd", runs=per_run(R, sd_reg=[0.1, 2e-5, 0.5], sd_anneal_iters=[-1, 4, 0]))
    batches = [(torch.tensor([[[0.5], [-1.0]]] * R, dtype=torch.float64), torch.tensor([[1.0, 0.0]] * R))]
    steps = (0, 3, 4, 100)
    objectives = [method.objective(lambda x: x, batches, step) for step in steps]
    weights = {0: [0.1] * 4, 1: [2e-5, 2e-5, 1.0, 1.0], 2: [1.0] * 4}
    multipliers = {0: [1.0] * 4, 1: [1.0, 1.0, 2e-5, 2e-5], 2: [0.5] * 4}  # what the loss is multiplied by
    for r in range(R):
        assert [o.penalty_weight[r].item() for o in objectives] == weights[r]
        assert [1 / o.divide_by[r].item() for o in objectives] == pytest.approx(multipliers[r], rel=1e-12)
    assert method.optimizer_reset_mask(4) is None


def test_sd_switch_with_a_zero_weight_is_refused():
    with pytest.raises(ConfigError, match="needs sd_reg > 0"):
        make("sd", runs=per_run(3, sd_reg=[0.1, 0.0, 0.1], sd_anneal_iters=[-1, 5, 5]))
    make("sd", sd_reg=0.0)  # a zero weight without the switch is plain ERM


# Bad input and warnings ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["iberm", "ibirm"])
def test_the_bottleneck_needs_two_examples_per_environment_batch(name):
    batches = [(torch.zeros(1, 1, 2), torch.zeros(1, 1)), (torch.zeros(1, 3, 2), torch.zeros(1, 3))]
    with pytest.raises(ConfigError, match=f"{name}: .* a batch has 1 example; use batch_size >= 2"):
        make(name, bottleneck="logits").objective(FeaturePack(READOUT), batches, 0)


def test_features_of_a_linear_model_warn_that_the_penalty_is_a_constant():
    batches = feature_data(1)[1]
    constant = [(x.detach(), y) for x, y in batches]  # a linear model's features: its inputs
    method = make("iberm")
    with pytest.warns(UserWarning, match="bottleneck=features on a model whose featurizer has no parameters"):
        method.objective(FeaturePack(READOUT), constant, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.objective(FeaturePack(READOUT), constant, 1)  # once per method
        make("iberm").objective(FeaturePack(READOUT), batches, 0)  # features that depend on parameters
        make("iberm", bottleneck="logits").objective(FeaturePack(READOUT), constant, 0)


@pytest.mark.parametrize("method, overrides, message", [
    ("iberm", {"ib_anneal_iters": 50}, "ib_anneal_iters=50 >= steps=50"),
    ("ibirm", {"ib_anneal_iters": 60, "anneal_iters": 10}, "ib_weight=100 never applies"),
    ("ibirm", {"anneal_iters": 50, "ib_anneal_iters": 10}, "penalty_weight=100 never applies"),
    ("sd", {"sd_anneal_iters": 50}, "sd_anneal_iters=50 >= steps=50"),
])
def test_a_schedule_that_never_applies_warns(method, overrides, message):
    with pytest.warns(HParamWarning, match=message):
        make_spec("linear_sem", method, steps=50, overrides=overrides)


@pytest.mark.parametrize("name", ["iberm", "ibirm", "sd"])
def test_declared_hyperparameters_draw_valid_values_and_the_docstring_cites_the_paper(name):
    from invbench.hparams import draw
    from invbench.registry import METHODS

    cls = METHODS.get(name)
    assert re.search(r"\((19|20)\d\d\)", cls.__doc__)
    for seed in range(5):
        for key, value in draw(cls.hparams, seed).items():
            assert cls.hparams[key].validate(key, value) == value
    searched = {key for key, hp in cls.hparams.items() if hp.search is not None}
    assert searched == {"iberm": {"ib_weight", "ib_anneal_iters"},
                        "ibirm": {"penalty_weight", "anneal_iters", "ib_weight", "ib_anneal_iters"},
                        "sd": {"sd_reg"}}[name]  # DomainBed's searches, no more


@pytest.mark.parametrize("method, name, value, message", [
    ("iberm", "ib_weight", -1.0, "out of range"),
    ("ibirm", "ib_anneal_iters", 2.5, "not int"),
    ("ibirm", "bottleneck", "hidden", "one of 'features', 'logits'"),
    ("sd", "sd_reg", -0.1, "out of range"),
    ("sd", "sd_anneal_iters", -2, "out of range"),
])
def test_invalid_values_are_rejected_with_what_is_allowed(method, name, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_spec("linear_sem", method, overrides={name: value})
    assert name in str(info.value)


# Resume and the optimizer reset through the runner ---------------------------------------


def small_spec(method, **overrides):
    """linear_sem through a small MLP (a featurizer with parameters), minibatches."""
    return make_spec("linear_sem", method, dataset_options={"n_per_env": 200}, model="mlp", steps=40,
                     eval_every=10, overrides={"batch_size": 50, "hidden_dim": 8, **overrides}, device="cpu")


@pytest.mark.parametrize("irm_anneal, ib_anneal", [(INTERRUPT_AT - 5, INTERRUPT_AT + 5),
                                                   (INTERRUPT_AT + 5, INTERRUPT_AT - 5),
                                                   (INTERRUPT_AT, INTERRUPT_AT)])
def test_ibirm_resume_follows_both_schedules(tmp_path, monkeypatch, irm_anneal, ib_anneal):
    spec = small_spec("ibirm", anneal_iters=irm_anneal, ib_anneal_iters=ib_anneal, penalty_weight=50.0,
                      ib_weight=3.0, scale_loss=True)
    full = run(spec, tmp_path / "full")
    resumed = interrupted_then_resumed(spec, tmp_path / "resumed", monkeypatch)
    assert metrics_of(resumed) == metrics_of(full)
    record = load_records(full)[-1]["train"]
    assert record["ib_weight"] == 3.0 and record["ib_penalty"] > 0  # the bottleneck was on


@pytest.mark.parametrize("method, overrides", [("iberm", {"ib_anneal_iters": INTERRUPT_AT, "ib_weight": 5.0}),
                                               ("sd", {"sd_reg": 0.01, "sd_anneal_iters": INTERRUPT_AT + 5})])
def test_iberm_and_sd_resume_byte_identical(tmp_path, monkeypatch, method, overrides):
    spec = small_spec(method, **overrides)
    full = run(spec, tmp_path / "full")
    resumed = interrupted_then_resumed(spec, tmp_path / "resumed", monkeypatch)
    assert metrics_of(resumed) == metrics_of(full)


@pytest.mark.parametrize("method, overrides", [
    ("ibirm", {"anneal_iters": 15, "ib_anneal_iters": 10}),
    ("ibirm", {"anneal_iters": 10, "ib_anneal_iters": 15}),
    ("iberm", {"ib_anneal_iters": 15}),
])
def test_optimizer_is_recreated_at_the_last_anneal_step(tmp_path, method, overrides):
    # Adam counts its updates: after its last reset at step 15 of 40 it has made 25.
    for reset, expected in [(True, 40 - 15), (False, 40)]:
        run_dir = run(small_spec(method, reset_optimizer=reset, **overrides), tmp_path / str(reset))
        state = torch.load(run_dir / CHECKPOINT, weights_only=False)["optimizer"]
        assert int(state["step"]) == expected


# Packs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, model, shared, per_draw", [
    ("ibirm", "mlp", {"bottleneck": "features"}, lambda d: {"anneal_iters": 3 + d, "ib_anneal_iters": 8 - d,
                                                             "ib_weight": 0.5 + d, "penalty_weight": 10.0 * (d + 1)}),
    ("iberm", "linear", {"bottleneck": "logits"}, lambda d: {"ib_anneal_iters": 2 + 3 * d, "ib_weight": 2.0 ** d}),
    ("sd", "mlp", {}, lambda d: {"sd_reg": 0.05 * (d + 1), "sd_anneal_iters": [-1, 5, 12, -1][d]}),
])
def test_a_run_writes_the_same_bytes_alone_and_in_a_pack(tmp_path, method, model, shared, per_draw):
    """Runs whose weights and anneal steps (so their resets) differ, trained as one pack."""
    specs = [make_spec("example2", method, dataset_options={"n_per_env": 64}, model=model, trial=trial,
                       steps=20, eval_every=5, device="cpu",
                       overrides={"batch_size": 0, "lr": 0.01 * (draw + 1), **shared, **per_draw(draw),
                                  **({"hidden_dim": 16} if model == "mlp" else {})})
             for draw in range(4) for trial in range(2)]
    outcomes = run_pack(specs, tmp_path / "pack")
    assert [o.status for o in outcomes] == ["done"] * len(specs)
    assert len({metrics_of(tmp_path / "pack" / spec.dirname) for spec in specs}) == len(specs)
    for spec in specs:
        assert metrics_of(tmp_path / "pack" / spec.dirname) == metrics_of(run(spec, tmp_path / "alone")), spec.dirname


# The spurious feature ----------------------------------------------------------------------

class SpuriousAnyModel(SpuriousLinear):
    """tests/test_methods_invariance.py's data (invariant x, spurious z whose agreement with
    the label is 95 % and 80 % in training and 10 % in test) with a share that any model
    has: mean |df/dz| / (mean |df/dx| + mean |df/dz|) over the training inputs, which is
    |w_z| / (|w_x| + |w_z|) for a linear model."""

    protocol = "test-spurious-any"

    def build(self, options, data_seed, holdout_fraction, data_dir):
        dataset = super().build(options, data_seed, holdout_fraction, data_dir)
        probe = torch.cat([env.splits["train"][0] for env in dataset.envs[:2]])

        def spurious_share(model):
            with torch.enable_grad():
                inputs = probe.clone().requires_grad_(True)
                (gradient,) = torch.autograd.grad(model(inputs).sum(), inputs)
            size = gradient.abs().mean(dim=0)
            return {"spurious_share": (size[1] / size.sum()).item()}

        dataset.extra_metrics = spurious_share
        return dataset


@pytest.fixture
def spurious_data():
    DATASETS.register("test_spurious_any")(SpuriousAnyModel)
    register(Protocol(name="test-spurious-any", description="full batch, lr 0.05", datasets=("test_spurious_any",),
                      hparams={"batch_size": 0, "lr": 0.05}, search={"lr": None}))
    yield "test_spurious_any"
    DATASETS.unregister("test_spurious_any")
    PROTOCOLS.unregister("test-spurious-any")


def final_record(dataset, method, trial, out, model=None, **overrides):
    spec = make_spec(dataset, method, trial=trial, model=model, steps=400, eval_every=400, overrides=overrides,
                     device="cpu")
    record = load_records(run(spec, out))[-1]
    return record["extra"]["spurious_share"], record["envs"]["p=0.1"]["train"]["acc"]


IRM_SCHEDULE = {"penalty_weight": 1000.0, "anneal_iters": 100}


@pytest.mark.parametrize("trial", [0, 1, 2])
def test_linear_ibirm_leans_on_z_less_than_erm_while_iberm_and_sd_lean_on_it_more(spurious_data, tmp_path, trial):
    """Linear model, bottleneck=logits (a linear featurizer is the identity: its features'
    variance does not depend on the weights). IB-IRM with a small IB weight keeps IRMv1's
    success (measured: share 0.02-0.07 against ERM's ~0.49; from ib_weight 0.1 the variance
    term shrinks the outputs and undoes it on some trials).

    IB-ERM and SD lean MORE on z than ERM (measured ~0.6 against ~0.49, test accuracy ~0.35
    against ~0.58): both penalise the size of the outputs, and z (noise 0.1, 95 % and 80 %
    agreement) buys more margin per unit of output than x (noise 1). This is their papers'
    own finding: Ahuja et al. (2021) prove that the bottleneck helps when the invariant
    features carry all the information about the label and that IB-ERM alone does not when
    they do not (anti-causal data such as this one and their AC-CMNIST, where IB-ERM stays at
    ERM's level and IB-IRM keeps IRM's success); Pezeshki et al. (2021) present SD as a cure
    for gradient starvation (a dominant feature keeping others from being learned), not as a
    way to drop a spurious feature, and their Colored MNIST gain needs their delayed,
    re-weighted schedule (sd_anneal_iters)."""
    erm, erm_acc = final_record(spurious_data, "erm", trial, tmp_path)
    assert erm > 0.4
    share, acc = final_record(spurious_data, "ibirm", trial, tmp_path, bottleneck="logits", ib_weight=0.01,
                              ib_anneal_iters=100, **IRM_SCHEDULE)
    assert share < erm - 0.25 and acc > erm_acc + 0.15, (share, acc, erm, erm_acc)
    for method, overrides in [("iberm", {"bottleneck": "logits", "ib_weight": 1.0, "ib_anneal_iters": 100}),
                              ("sd", {})]:
        share, acc = final_record(spurious_data, method, trial, tmp_path, **overrides)
        assert share > erm + 0.05 and acc < erm_acc, (method, share, acc, erm, erm_acc)


@pytest.mark.parametrize("trial", [0, 1, 2])
def test_mlp_ibirm_on_features_beats_erm_in_the_test_environment(spurious_data, tmp_path, trial):
    """The MLP (hidden_dim 16), bottleneck=features (its two hidden layers), lr 0.01: IB-IRM
    reaches IRMv1's test accuracy (measured 0.82-0.85 against ERM's 0.53-0.57) where the
    spurious correlation is reversed. The full-batch IRMv1 estimator: with the unbiased one
    IRMv1 itself fails on trial 2 of this small MLP. An input-gradient share is no measure
    for the MLP (ERM's is ~0.35 though it follows z), so the test environment's accuracy
    is. IB-ERM and SD stay at ERM's accuracy (measured within 0.015 of it)."""
    mlp = {"hidden_dim": 16, "lr": 0.01}
    _, erm_acc = final_record(spurious_data, "erm", trial, tmp_path, model="mlp", **mlp)
    assert erm_acc < 0.6
    _, acc = final_record(spurious_data, "ibirm", trial, tmp_path, model="mlp", estimator="full_batch",
                          ib_weight=1.0, ib_anneal_iters=100, **IRM_SCHEDULE, **mlp)
    assert acc > erm_acc + 0.2, (acc, erm_acc)
    for method, overrides in [("iberm", {"ib_weight": 1.0, "ib_anneal_iters": 100}), ("sd", {})]:
        _, acc = final_record(spurious_data, method, trial, tmp_path, model="mlp", **overrides, **mlp)
        assert abs(acc - erm_acc) < 0.05, (method, acc, erm_acc)


def test_the_spurious_share_is_the_linear_weights_share():
    # the any-model share reads |w_z| / (|w_x| + |w_z|) off a linear model, as the original test
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.9]]))
    dataset = SpuriousAnyModel().build({"p": (0.95, 0.8, 0.1)}, 0, 0.0, None)
    assert dataset.extra_metrics(model)["spurious_share"] == pytest.approx(0.9 / 1.2, rel=1e-6)
    assert not math.isnan(dataset.extra_metrics(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(),
                                                                    torch.nn.Linear(3, 1)))["spurious_share"])
