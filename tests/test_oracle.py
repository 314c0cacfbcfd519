"""The oracle: ERM on each dataset's oracle data (the spurious signal removed), a method row of
its own; and the protocol fields that give it its own model and steps (the IRM paper's
grayscale row)."""

import pytest
import torch

from idx_helpers import write_dataset
from invbench.errors import ConfigError
from invbench.protocol import Protocol, check_protocol
from invbench.models import build_model
from invbench.registry import DATASETS
from invbench.runner import load_records, run
from invbench.spec import make_spec
from invbench.trainer import build_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNIT_TESTS = ["example1", "example1s", "example2", "example2s", "example3", "example3s"]


def spec(dataset, method, **kw):
    return make_spec(dataset, method, device="cpu", **kw)


def unscrambled(name, dataset, options, seed=0):
    """The inputs in the paper's coordinates: undo the "s" variants' rotation by building the
    plain variant's data, which shares every sample (only the rotation differs)."""
    return build_dataset(spec(name.rstrip("s"), "erm", dataset_options=options), data_seed=seed) \
        if name.endswith("s") else dataset


@pytest.mark.parametrize("name", UNIT_TESTS)
def test_unit_test_oracle_shuffles_the_spurious_block_of_training_and_validation_only(name):
    options = {"n_per_env": 400, "dim_inv": 3, "dim_spu": 4}
    usual = build_dataset(spec(name, "erm", dataset_options=options))
    oracle = build_dataset(spec(name, "oracle", dataset_options=options))
    plain_usual = unscrambled(name, usual, options)
    plain_oracle = build_dataset(spec(name.rstrip("s"), "oracle", dataset_options=options)) \
        if name.endswith("s") else oracle
    for u, o, pu, po in zip(usual.envs, oracle.envs, plain_usual.envs, plain_oracle.envs):
        assert torch.equal(u.splits["test"][0], o.splits["test"][0])  # the test data are the usual ones
        for split in ("train", "val"):
            assert torch.equal(u.splits[split][1], o.splits[split][1])
            x_u, x_o = pu.splits[split][0], po.splits[split][0]
            assert torch.equal(x_u[:, :3], x_o[:, :3])  # invariant block untouched
            # the spurious block: the same rows, in another order (each row kept whole)
            rows_u = sorted(map(tuple, x_u[:, 3:].tolist()))
            rows_o = sorted(map(tuple, x_o[:, 3:].tolist()))
            assert rows_u == rows_o and not torch.equal(x_u[:, 3:], x_o[:, 3:])


def test_unit_test_oracle_removes_the_link_between_spurious_block_and_label():
    # Example2: the background (spurious block) agrees with the label far more than chance in
    # training; in the oracle's training data it agrees at chance: what independent draws from
    # the two marginals would give.
    options = {"n_per_env": 4000}
    for method, expect_link in (("erm", True), ("oracle", False)):
        dataset = build_dataset(spec("example2", method, dataset_options=options))
        x, y = dataset.envs[0].splits["train"]
        background = x[:, 5:].sum(dim=1)
        positive = (background > 0).float()
        agreement = (positive == y).float().mean().item()
        chance = (positive.mean() * y.mean() + (1 - positive.mean()) * (1 - y.mean())).item()
        link = abs(agreement - chance)
        assert (link > 0.2) if expect_link else (link < 0.03), (method, agreement, chance)


def test_sem_oracle_recovers_the_causal_coefficients_where_erm_does_not(tmp_path):
    # Fully observed, y-noise sigma: least squares on [x, z] leans on z (causal error ~ .82 at
    # the population); on the oracle data z is independent of y, so it finds w_x = 1, w_z = 0.
    options = {"n_per_env": 2000}
    errors = {}
    for method in ("erm", "oracle"):
        run_dir = run(spec("linear_sem", method, dataset_options=options, steps=1500, eval_every=1500,
                           overrides={"lr": 0.05}), tmp_path)
        errors[method] = load_records(run_dir)[-1]["extra"]
    assert errors["erm"]["causal_error"] > 0.3
    assert errors["oracle"]["causal_error"] < 0.02 and errors["oracle"]["noncausal_error"] < 0.02


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, 1200, 200)
    return str(root)


@pytest.mark.parametrize("name", ["cmnist_irm", "cmnist_domainbed"])
def test_colored_mnist_oracle_makes_colour_constant_and_keeps_the_grey_image(name, mnist_dir):
    usual = build_dataset(spec(name, "erm", data_dir=mnist_dir))
    oracle = build_dataset(spec(name, "oracle", data_dir=mnist_dir))
    for u, o in zip(usual.envs, oracle.envs):
        for split, (x, y) in u.splits.items():
            x_o, y_o = o.splits[split]
            assert torch.equal(y, y_o)
            assert torch.equal(x_o[:, 0], x.max(dim=1).values)  # the grey image: one channel was lit
            assert torch.count_nonzero(x_o[:, 1]) == 0
            assert torch.count_nonzero(x[:, 1]) > 0  # the usual data are coloured


def test_irm_paper_oracle_is_the_papers_grayscale_run(mnist_dir):
    # the code's tuned grayscale ERM: its colour-blind model, hidden 83, its l2 / lr, 101 steps
    s = spec("cmnist_irm", "oracle", data_dir=mnist_dir)
    assert (s.model, s.steps) == ("mlp_grayscale", 100)
    assert s.hparams == {"batch_size": 0, "hidden_dim": 83, "l2": 0.0008602868865288383,
                         "lr": 0.0028171488133821726, "weight_decay": 0.0}
    # every other method keeps the protocol's model and steps
    erm = spec("cmnist_irm", "erm", data_dir=mnist_dir)
    assert (erm.model, erm.steps) == ("mlp", 500)
    # the colour-blind model sees exactly the same inputs on the oracle data as on the usual
    torch.manual_seed(0)
    net = build_model("mlp_grayscale", (2, 14, 14), 1, {"hidden_dim": 8})
    usual = build_dataset(spec("cmnist_irm", "erm", data_dir=mnist_dir)).envs[0].splits["train"][0]
    oracle = build_dataset(s).envs[0].splits["train"][0]
    assert torch.equal(net(usual), net(oracle))


def test_oracle_and_erm_runs_never_share_data():
    a, b = spec("example1", "erm"), spec("example1", "oracle")
    assert a.data_key != b.data_key and b.uses_oracle_data and not a.uses_oracle_data


def test_oracle_on_a_dataset_without_oracle_data_says_which_have_one():
    class NoOracle(DATASETS.get("example1")):
        """A dataset without oracle data."""
        oracle = None

    DATASETS.register("test_no_oracle")(NoOracle)
    try:
        with pytest.raises(ConfigError) as err:
            spec("test_no_oracle", "oracle")
        message = str(err.value)
        assert "'test_no_oracle' defines none" in message and "example1" in message and "cmnist_irm" in message
        assert "test_no_oracle," not in message
    finally:
        DATASETS.unregister("test_no_oracle")


@pytest.mark.parametrize("field, value, message", [
    ("method_models", {"oracle": "no_such_model"}, "unknown model 'no_such_model'"),
    ("method_steps", {"oracle": 0}, "method_steps['oracle'] must be an integer >= 1"),
    ("method_steps", {"no_such_method": 10}, "names method 'no_such_method'"),
])
def test_protocol_per_method_model_and_steps_are_checked(field, value, message):
    protocol = Protocol(name="test-bad", description="x", datasets=("example1",), **{field: value})
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_protocol(protocol)


def test_oracle_is_its_own_row_of_the_leaderboard(tmp_path):
    from invbench.results.aggregate import collect

    options = {"n_per_env": 200}
    for method in ("erm", "oracle"):
        run(spec("linear_sem", method, dataset_options=options, steps=20, eval_every=20), tmp_path)
    (table,) = collect(tmp_path, selection="last").tables
    assert set(table.rows) == {"erm", "oracle"}


def test_list_says_what_each_oracle_is_and_how_the_protocol_trains_it(cli):
    out = cli("list").stdout
    assert "oracle: Oracle: ERM trained and selected on the dataset's oracle data" in out
    assert "oracle data (method oracle): the effects z shuffled across rows" in out
    assert "oracle trains with: model mlp_grayscale, 100 steps" in out
