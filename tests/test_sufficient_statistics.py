"""Training on sufficient statistics (invbench.sufficient), and the SEM IRM's closed-form step.

Checked against numpy: the compressed rows keep every linear model's mean squared error; the
closed-form gradient of the IRM paper's SEM objective equals central finite differences of
that objective computed on the examples. Runs trained on moments track runs trained on the
examples; runs where moments are not exact are refused with the reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from invbench.errors import ConfigError
from invbench.models import Linear
from invbench.paper_protocols import UNIT_TESTS_IRM
from invbench.packed import PackedModel
from invbench.packing import pack_key
from invbench.registry import METHODS
from invbench.rundir import SPEC
from invbench.spec import RunSpec, make_spec
from invbench.sufficient import compress
from invbench.sweep.expansion import expand
from invbench.sweep.schema import parse_sweep
from invbench.tasks import Task
from invbench.trainer import Trainer

RNG = np.random.default_rng(20261129)


def test_the_compressed_rows_have_the_examples_mean_squared_error_for_every_linear_map():
    runs, n, d = 3, 40, 5
    x = RNG.normal(size=(runs, n, d))
    y = x @ RNG.normal(size=d) + RNG.normal(size=(runs, n))
    rows_x, rows_y = compress(torch.tensor(x), torch.tensor(y))
    assert rows_x.shape == (runs, d + 1, d) and rows_y.shape == (runs, d + 1)
    assert rows_x.dtype == torch.float64
    for _ in range(5):
        m = RNG.normal(size=d)
        for r in range(runs):
            examples = np.mean((x[r] @ m - y[r]) ** 2)
            assert np.mean((rows_x[r].numpy() @ m - rows_y[r].numpy()) ** 2) == pytest.approx(examples, rel=1e-12)


def test_sigma_points_have_the_examples_mean_squared_error_for_every_affine_map():
    runs, n, d = 2, 50, 4
    x = 3.0 + RNG.normal(size=(runs, n, d))  # off-centre: the intercept matters
    y = x @ RNG.normal(size=d) + 1.5 + RNG.normal(size=(runs, n))
    rows_x, rows_y = compress(torch.tensor(x), torch.tensor(y), intercept=True)
    assert rows_x.shape == (runs, 2 * (d + 1), d) and rows_y.shape == (runs, 2 * (d + 1))
    for _ in range(5):
        m, b, scale = RNG.normal(size=d), RNG.normal(), RNG.normal()
        for r in range(runs):
            # x M + b, and a dummy scale and shift of it (IRMv1's): all quadratic in (x, y)
            examples = np.mean((scale * (x[r] @ m + b) + 0.7 - y[r]) ** 2)
            rows = np.mean((scale * (rows_x[r].numpy() @ m + b) + 0.7 - rows_y[r].numpy()) ** 2)
            assert rows == pytest.approx(examples, rel=1e-12)
    # the d + 1 QR rows keep maps through the origin only
    qr_x, qr_y = compress(torch.tensor(x), torch.tensor(y))
    assert np.mean((qr_x[0].numpy() @ m + b - qr_y[0].numpy()) ** 2) != pytest.approx(
        np.mean((x[0] @ m + b - y[0]) ** 2), rel=1e-3)


def test_the_unit_tests_irmv1_on_sigma_points_is_its_closed_form_on_the_examples():
    # IRMv1 of the unit tests: (1 - lambda) mean_e R_e + lambda sum_e [(dR_e/ds)^2 + (dR_e/db)^2]
    # at s = 1, b = 0 for s f + b; for the squared error dR/ds = mean 2 (f - y) f, dR/db = mean 2 (f - y)
    runs, d, sizes, lam = 2, 3, (40, 60), 0.9
    x_envs = [1.0 + RNG.normal(size=(runs, n, d)) for n in sizes]
    y_envs = [x @ np.array([1.0, -0.5, 0.2]) + 0.3 + 0.2 * RNG.normal(size=x.shape[:2]) for x in x_envs]
    weights, bias = RNG.normal(size=(runs, d)), RNG.normal(size=runs)
    models = []
    for w, b in zip(weights, bias):
        model = Linear(d, 1, bias=True).double()
        with torch.no_grad():
            model.linear.weight.copy_(torch.tensor(w).reshape(1, -1))
            model.linear.bias.fill_(float(b))
        models.append(model)
    hparams = {**UNIT_TESTS_IRM, "irm_lambda": lam, **{k: v.default for k, v in METHODS.get("irm").hparams.items()
                                                       if k not in UNIT_TESTS_IRM and k != "irm_lambda"}}
    method = METHODS.get("irm")([hparams] * runs, 2, Task("regression"))
    batches = [compress(torch.tensor(x), torch.tensor(y), intercept=True) for x, y in zip(x_envs, y_envs)]
    assert {tuple(b[0].shape) for b in batches} == {(runs, 2 * (d + 1), d)}
    objective = method.objective(PackedModel(models), batches, step=0)
    for r in range(runs):
        risks, penalty = [], 0.0
        for x, y in zip(x_envs, y_envs):
            f = x[r] @ weights[r] + bias[r]
            risks.append(np.mean((f - y[r]) ** 2))
            penalty += np.mean(2 * (f - y[r]) * f) ** 2 + np.mean(2 * (f - y[r])) ** 2
        assert objective.risk[r].item() == pytest.approx((1 - lam) * np.mean(risks), rel=1e-10)
        assert objective.penalty[r].item() == pytest.approx(penalty, rel=1e-10)


def test_few_examples_are_kept_as_they_are():
    x, y = torch.randn(2, 4, 6), torch.randn(2, 4)
    rows_x, rows_y = compress(x, y)
    assert rows_x is x and rows_y is y


def sem_objective(x_envs, y_envs, phi, reg):
    """The IRM code's SEM objective on the examples, in numpy: reg * sum_e R_e + (1 - reg) * sum_e mean_j g_j^2."""
    d = phi.shape[0]
    total = 0.0
    for x, y in zip(x_envs, y_envs):
        residual = x @ phi @ np.ones(d) - y
        g = 2 * (x @ phi).T @ residual / len(y)  # d R_e / d w at w = ones
        total += reg * np.mean(residual ** 2) + (1 - reg) * np.mean(g ** 2)
    return total


def test_the_sem_irm_closed_form_gradient_is_the_objectives_finite_differences():
    runs, d, sizes = 3, 4, (30, 25)
    x_envs = [RNG.normal(size=(runs, n, d)) for n in sizes]
    y_envs = [x[..., 0] + 0.5 * x[..., 2] + 0.3 * RNG.normal(size=x.shape[:2]) for x in x_envs]
    phis = np.eye(d) + 0.3 * RNG.normal(size=(runs, d, d))
    regs = [0.0, 1e-3, 0.1]
    method = METHODS.get("irm_sem")([{"reg": r} for r in regs], 2, Task("regression"))
    for batches in ([(torch.tensor(x), torch.tensor(y)) for x, y in zip(x_envs, y_envs)],
                    [compress(torch.tensor(x), torch.tensor(y)) for x, y in zip(x_envs, y_envs)]):
        objective, gradient = method.closed_form_step(torch.tensor(phis), batches)
        for r in range(runs):
            xs, ys = [x[r] for x in x_envs], [y[r] for y in y_envs]
            value = sem_objective(xs, ys, phis[r], regs[r])
            composed = objective.risk[r] + objective.penalty_weight[r] * objective.penalty[r]
            assert composed.item() == pytest.approx(value, rel=1e-10)
            step = 1e-6
            numeric = np.zeros((d, d))
            for i in range(d):
                for j in range(d):
                    bump = np.zeros((d, d))
                    bump[i, j] = step
                    numeric[i, j] = (sem_objective(xs, ys, phis[r] + bump, regs[r])
                                     - sem_objective(xs, ys, phis[r] - bump, regs[r])) / (2 * step)
            assert gradient[r].numpy() == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def sem_specs(train_data, steps=200, method="irm_sem", **options):
    return [make_spec("linear_sem", method, preset="irm-paper-sem", trial=trial, steps=steps, eval_every=steps,
                      dataset_options=options, overrides={"lr": 1e-2, **({"reg": reg} if method == "irm_sem" else {})},
                      test_envs=(2,) if method == "irm_sem" else (), train_data=train_data, device="cpu")
            for trial in (0, 1) for reg in ((0.0, 1e-2) if method == "irm_sem" else (None,))]


@pytest.mark.parametrize("method", ["irm_sem", "erm"])
def test_runs_trained_on_moments_track_runs_trained_on_the_examples(method, one_torch_thread):
    trained = {}
    for train_data in ("examples", "sufficient_statistics"):
        trainer = Trainer(sem_specs(train_data, method=method))
        start = {name: p.detach().clone() for name, p in trainer.model.packed_parameters().items()}
        rows = {tuple(x.shape) for x, _ in trainer.batches(0)}
        # 1,000 examples per environment, or d + 1 = 11 rows
        assert rows == ({(len(trainer.specs), 1000, 10)} if train_data == "examples" else {(len(trainer.specs), 11, 10)})
        while not trainer.finished:
            trainer.step()
        assert all(not torch.equal(start[name], p) for name, p in trainer.model.packed_parameters().items())
        trained[train_data] = (trainer.model.packed_parameters(), trainer.evaluate())
    (examples, records), (moments, moment_records) = trained["examples"], trained["sufficient_statistics"]
    for name in examples:
        assert moments[name].detach().numpy() == pytest.approx(examples[name].detach().numpy(), abs=2e-5)
    for mine, theirs in zip(moment_records, records):
        assert mine["extra"]["causal_error"] == pytest.approx(theirs["extra"]["causal_error"], abs=1e-5)
        for env, splits in theirs["envs"].items():
            for split, metrics in splits.items():
                assert mine["envs"][env][split]["mse"] == pytest.approx(metrics["mse"], rel=1e-4)


@pytest.mark.parametrize("method", ["irm", "andmask", "iga", "oracle"])
def test_unit_test_runs_on_sigma_points_track_runs_on_the_examples(method, one_torch_thread):
    # example1 (regression, a linear model with bias), the unit tests' protocol, 3 x 2,000 examples
    trained = {}
    for train_data in ("examples", "sufficient_statistics"):
        specs = [make_spec("example1", method, trial=trial, hparams_seed=draw, steps=150, eval_every=150,
                           dataset_options={"n_per_env": 2000}, train_data=train_data, device="cpu")
                 for trial, draw in ((0, 0), (1, 3))]
        trainer = Trainer(specs)
        assert {tuple(x.shape) for x, _ in trainer.batches(0)} == (
            {(2, 2000, 10)} if train_data == "examples" else {(2, 22, 10)})
        while not trainer.finished:
            trainer.step()
        trained[train_data] = trainer.evaluate()
    for mine, theirs in zip(trained["sufficient_statistics"], trained["examples"]):
        for env, splits in theirs["envs"].items():
            for split, metrics in splits.items():
                assert mine["envs"][env][split]["mse"] == pytest.approx(metrics["mse"], rel=1e-3)


@pytest.mark.parametrize("dataset, method, overrides, model, why", [
    ("example2", "erm", {}, None, "the task is binary"),
    ("linear_sem", "coral", {}, None, "method 'coral' uses more of the data than each environment's mean loss"),
    ("linear_sem", "erm", {}, "mlp", "model 'mlp' is not linear in its input"),
    ("example1", "irm", {"estimator": "unbiased"}, None, "use estimator=full_batch"),
    ("linear_sem", "erm", {"batch_size": 64}, None, "batch_size is 64"),
])
def test_runs_where_moments_are_not_exact_are_refused_with_the_reason(dataset, method, overrides, model, why):
    with pytest.raises(ConfigError, match="is not exact for this run") as error:
        make_spec(dataset, method, overrides=overrides, model=model, train_data="sufficient_statistics")
    assert why in str(error.value)
    with pytest.raises(ConfigError, match="train_data must be one of examples, sufficient_statistics; got 'moments'"):
        make_spec("linear_sem", "erm", train_data="moments")


def test_train_data_enters_the_id_only_when_set():
    plain = make_spec("linear_sem", "irm_sem", device="cpu")
    moments = make_spec("linear_sem", "irm_sem", device="cpu", train_data="sufficient_statistics")
    assert "train_data" not in plain.identity()  # ids made before the field existed stand
    assert moments.identity()["train_data"] == "sufficient_statistics"
    assert moments.run_id != plain.run_id and pack_key(moments) != pack_key(plain)
    assert RunSpec.from_dict(json.loads(json.dumps(moments.to_dict()))).run_id == moments.run_id
    assert RunSpec.from_dict(json.loads(json.dumps(plain.to_dict()))).run_id == plain.run_id


def test_a_sweep_entry_chooses_its_training_data():
    config = parse_sweep({"methods": ["erm", "irm_sem"], "datasets": [
        {"name": "linear_sem", "methods": ["irm_sem"], "test_envs": [[2]], "train_data": "sufficient_statistics"},
        {"name": "linear_sem", "methods": ["erm"], "test_envs": [[]]}]})
    assert sorted((s.method, s.train_data) for s in expand(config)) == [
        ("erm", "examples"), ("irm_sem", "sufficient_statistics")]
    with pytest.raises(ConfigError, match="one of examples, sufficient_statistics"):
        parse_sweep({"methods": ["erm"], "datasets": [{"name": "linear_sem", "train_data": "moments"}]})


def test_the_run_command_trains_on_moments_and_says_so(tmp_path, cli):
    out = cli("run", "-d", "linear_sem", "-m", "irm_sem", "--steps", "5", "--train-data", "sufficient_statistics",
              "--option", "n_per_env=50", "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    (spec_file,) = tmp_path.glob(f"*/{SPEC}")
    assert json.loads(spec_file.read_text())["train_data"] == "sufficient_statistics"
    refused = cli("run", "-d", "example2", "-m", "erm", "--train-data", "sufficient_statistics", "--out", tmp_path)
    assert refused.returncode == 2 and "the task is binary" in refused.stderr


@pytest.mark.parametrize("dummies, rows", [("scale", 11), ("scale_and_shift", 22)])
def test_a_dummy_shift_of_the_output_gets_rows_that_keep_the_constant(dummies, rows):
    # linear_sem's model has no intercept (d + 1 QR rows) unless the method adds one
    spec = make_spec("linear_sem", "irm", overrides={"dummies": dummies}, dataset_options={"n_per_env": 100},
                     train_data="sufficient_statistics", device="cpu")
    assert {tuple(x.shape) for x, _ in Trainer(spec).batches(0)} == {(1, rows, 10)}
