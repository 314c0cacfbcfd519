"""Protocols: one checked object per dataset and method family holds a paper's values."""

import warnings

import numpy as np
import pytest

from invbench.commands.common import spec_from_args
from invbench.errors import ConfigError
from invbench.hparams import LogUniform
from invbench.method import Method
from invbench.methods._penalty import ScheduledPenaltyMethod, schedule_hparams
from invbench.registry import DATASETS, METHODS
from invbench.spec import hparam_space, make_spec
from invbench.sweep.expansion import expand
from invbench.sweep.schema import apply_overrides, load_sweep, shipped_sweeps


@pytest.fixture
def throwaway_protocol():
    """Register protocols for one test and remove them afterwards."""
    from invbench.protocol import PROTOCOLS, Protocol, register

    names = []

    def make(**fields):
        fields = {"description": "test", "datasets": ("linear_sem",), **fields}
        names.append(fields["name"])
        return register(Protocol(**fields))

    yield make
    for name in names:
        PROTOCOLS.unregister(name)


# A: checked against each method's hyperparameters; values per named method -----------

def test_a_misspelt_key_names_the_key_the_method_and_what_is_allowed(throwaway_protocol):
    from invbench.protocol import get_protocol

    throwaway_protocol(name="test-misspelt", method_hparams={"irm": {"penalty_wieght": 5.0}})
    with pytest.raises(ConfigError) as info:
        get_protocol("test-misspelt")
    message = str(info.value)
    assert "'penalty_wieght'" in message and "method 'irm'" in message and "protocol 'test-misspelt'" in message
    assert "did you mean 'penalty_weight'" in message and "allowed: " in message and "estimator" in message
    with pytest.raises(ConfigError, match="penalty_wieght"):  # and no run is made with it
        make_spec("linear_sem", "irm", preset="test-misspelt")


def test_a_method_hyperparameter_for_every_method_and_an_unknown_method_are_errors(throwaway_protocol):
    from invbench.protocol import get_protocol

    throwaway_protocol(name="test-shared-penalty", hparams={"penalty_weight": 5.0})
    with pytest.raises(ConfigError, match=r"unknown hyperparameter 'penalty_weight' for every method .*method_hparams"):
        get_protocol("test-shared-penalty")
    throwaway_protocol(name="test-unknown-method", method_hparams={"vrexx": {"penalty_weight": 5.0}})
    with pytest.raises(ConfigError, match="names method 'vrexx', which is not registered"):
        get_protocol("test-unknown-method")
    throwaway_protocol(name="test-bad-value", method_hparams={"irm": {"estimator": "squared"}})
    with pytest.raises(ConfigError, match="method 'irm' in protocol 'test-bad-value'.*one of 'unbiased', 'full_batch'"):
        get_protocol("test-bad-value")


@pytest.fixture
def new_penalty_method():
    @METHODS.register("test_new_penalty")
    class NewPenalty(ScheduledPenaltyMethod):
        """A new method on the penalty schedule (2024): its own default weight 3."""

        hparams = schedule_hparams(weight=3.0, weight_search=LogUniform(0, 1), anneal=100,
                                   anneal_search=None, scale_loss=False, reset_optimizer=True, what="test")

    yield "test_new_penalty"
    METHODS.unregister("test_new_penalty")


def test_a_new_scheduled_penalty_method_keeps_its_own_weight_on_cmnist_irm(new_penalty_method):
    hp = make_spec("cmnist_irm", new_penalty_method).hparams
    assert (hp["penalty_weight"], hp["anneal_iters"], hp["scale_loss"]) == (3.0, 100, False)
    # and the protocol's search for IRMv1's weight is not its search either
    assert all(1.0 <= make_spec("cmnist_irm", new_penalty_method, hparams_seed=s).hparams["penalty_weight"] <= 10.0
               for s in range(1, 20))
    # the protocol's values for every method (full batch, the tuned ERM's training values) do apply
    assert (hp["batch_size"], hp["hidden_dim"], hp["l2"], hp["lr"]) == (0, 256, 0.001, 0.001)
    # MM-REx, named by the protocol: the REx code's run (weight 10,000 from step 100, divided by
    # it), with half the l2 weight since our loss is half the code's
    mmrex = make_spec("cmnist_irm", "mmrex").hparams
    assert (mmrex["penalty_weight"], mmrex["anneal_iters"], mmrex["scale_loss"], mmrex["reset_optimizer"],
            mmrex["l2"], mmrex["lr"], mmrex["hidden_dim"]) == (10_000.0, 100, True, False, 0.0005, 0.001, 256)


def test_mmrex_under_the_irm_protocol_is_half_the_rex_codes_loss():
    # the REx code (two environments): sum R_e + l2 |theta|^2 + W |R_1 - R_2|, divided by W
    # after the anneal; ours: mean R + l2' |theta|^2 + w (max R - mean R), divided by w
    import torch

    from invbench.method import compose_loss
    from invbench.tasks import Task

    hp = make_spec("cmnist_irm", "mmrex").hparams
    method = METHODS.get("mmrex")(hp, 2, Task("binary"))
    risks = torch.tensor([[0.7], [0.4]])  # (E, R)

    class Params:  # a model of one parameter vector theta, for the l2 term
        theta = torch.tensor([[1.0, 2.0]])

        def packed_parameters(self):
            return {"theta": self.theta}

    method.env_losses = lambda logits, batches: risks
    method.env_logits = lambda model, batches: None
    after = compose_loss(method.objective(Params(), [], step=hp["anneal_iters"]), Params(),
                         torch.tensor([hp["l2"]]))
    code = (0.7 + 0.4 + 0.001 * 5.0 + 10_000 * abs(0.7 - 0.4)) / 10_000
    assert after.item() == pytest.approx(code / 2, rel=1e-6)


def test_every_dataset_names_a_registered_protocol_made_for_it():
    from invbench.protocol import PROTOCOLS, get_protocol

    for name, family in DATASETS.items():
        protocol = get_protocol(family.protocol)  # checked in full
        assert name in protocol.datasets, (name, protocol.name)
    for name in PROTOCOLS.names():
        get_protocol(name)


def test_presets_and_name_matched_dataset_defaults_are_refused_not_ignored():
    from invbench.data import DatasetFamily

    with pytest.raises(ConfigError, match="sets presets: .*protocol"):
        class WithPreset(Method):
            presets = {"irm-paper": {"lr": 0.1}}
    with pytest.raises(ConfigError, match="sets hparam_defaults: .*protocol"):
        class WithDefaults(DatasetFamily):
            hparam_defaults = {"penalty_weight": 10.0}


def test_a_protocol_is_read_only():
    from invbench.protocol import get_protocol

    protocol = get_protocol("irm-paper")
    with pytest.raises(TypeError):
        protocol.method_hparams["irm"]["penalty_weight"] = 1.0


# B: `invbench run` and the shipped linear_sem sweep train the same configuration ------

def run_spec(*argv):
    from invbench.cli import build_parser

    return spec_from_args(build_parser().parse_args(["run", *argv]))


@pytest.mark.parametrize("sweep, options", [("linear_sem", []), ("demo", ["-o", "y_noise=unit"])])
def test_run_and_the_shipped_sweep_train_the_same_irm(sweep, options):
    alone = run_spec("-d", "linear_sem", "-m", "irm", *options)
    specs = expand(apply_overrides(load_sweep(shipped_sweeps()[sweep]), trials=1))
    same = [s for s in specs if s.method == "irm" and s.test_envs == alone.test_envs
            and s.dataset_options == alone.dataset_options]
    assert len(same) == 1
    assert same[0].hparams == alone.hparams and same[0].steps == alone.steps
    assert same[0].run_id == alone.run_id
    # the values of linear_sem's protocol: the IRM code's estimator, weight 10 from step 200
    assert (alone.hparams["estimator"], alone.hparams["penalty_weight"], alone.hparams["anneal_iters"]) == (
        "full_batch", 10.0, 200)


# C: a dataset's search space holds what applies to its model, around the defaults -----

def test_linear_and_cnn_runs_neither_draw_nor_record_a_hidden_width():
    for dataset in ("linear_sem", "example1", "cmnist_domainbed"):
        for seed in (0, 1, 2):
            assert "hidden_dim" not in make_spec(dataset, "erm", hparams_seed=seed).hparams, dataset
    assert make_spec("cmnist_irm", "erm").hparams["hidden_dim"] == 256
    # the model decides, not the dataset
    assert make_spec("linear_sem", "erm", model="mlp", overrides={"hidden_dim": 8}).hparams["hidden_dim"] == 8
    with pytest.raises(ConfigError, match="'hidden_dim' does not apply to model 'linear_nobias': only mlp, "
                                          "mlp_grayscale read it"):
        make_spec("linear_sem", "erm", overrides={"hidden_dim": 64})


def test_linear_sem_draws_explore_around_its_default_learning_rate():
    default = make_spec("linear_sem", "erm").hparams["lr"]
    lrs = [make_spec("linear_sem", "erm", hparams_seed=seed).hparams["lr"] for seed in range(1, 41)]
    assert default == 0.01
    assert sum(lr < default for lr in lrs) >= 10 and sum(lr > default for lr in lrs) >= 10
    assert all(10 ** -2.5 <= lr <= 10 ** -1.5 for lr in lrs)
    # and IRMv1's anneal step leaves the penalty at least half of the 2,000 steps
    assert all(make_spec("linear_sem", "irm", hparams_seed=s).hparams["anneal_iters"] <= 1000 for s in range(1, 41))


@pytest.mark.filterwarnings("ignore::invbench.spec.HParamWarning")
def test_every_searched_default_lies_among_its_draws():
    # independent of the distributions' own bounds: the default lies between the smallest and
    # the largest of many draws (a default of 0 switches a regulariser off and is exempt)
    for dataset in ("cmnist_irm", "cmnist_domainbed", "linear_sem", "example2"):
        for method in ("erm", "irm", "vrex", "mmrex", "groupdro"):
            for name, hp in hparam_space(method, dataset).items():
                if hp.search is None or hp.default == 0:
                    continue
                draws = [hp.search.sample(np.random.RandomState(seed)) for seed in range(400)]
                assert min(draws) <= hp.default <= max(draws), (dataset, method, name, hp.default, hp.search)


def test_a_protocol_default_outside_its_search_is_an_error(throwaway_protocol):
    throwaway_protocol(name="test-lr-outside", hparams={"lr": 0.5})  # the search stays 10^U(-4.5, -2.5)
    with pytest.raises(ConfigError, match=r"protocol 'test-lr-outside': lr=0.5 for method 'erm' lies outside its "
                                          r"search 10\^U\(-4.5, -2.5\)"):
        make_spec("linear_sem", "erm", preset="test-lr-outside")


# D: a protocol on a dataset it was not made for warns ---------------------------------

def test_a_protocol_on_a_foreign_dataset_warns_and_on_its_own_does_not():
    with pytest.warns(UserWarning, match="protocol 'irm-paper' was made for cmnist_irm, cfmnist_irm, "
                                             "not 'linear_sem'"):
        make_spec("linear_sem", "erm", preset="irm-paper")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_spec("cmnist_irm", "irm", preset="irm-paper")
        make_spec("cfmnist_irm", "erm", preset="irm-paper-grayscale")
        make_spec("linear_sem", "irm")


def test_the_cli_warns_once_for_a_run_and_for_a_sweep(cli, tmp_path):
    expected = "invbench: warning: protocol 'irm-paper' was made for cmnist_irm, cfmnist_irm, not 'linear_sem'"
    run = cli("run", "-d", "linear_sem", "-m", "erm", "--preset", "irm-paper", "-o", "n_per_env=20", "--steps", "1",
              "--out", tmp_path / "runs", "-q")
    assert run.returncode == 0, run.stderr
    assert [line for line in run.stderr.splitlines() if "warning" in line] == [expected + ": its values were tuned "
                                                                                          "for other data"]
    sweep = tmp_path / "foreign.toml"
    sweep.write_text(f'methods = ["erm", "groupdro"]\npreset = "irm-paper"\ntrials = 2\nout = "{tmp_path / "sweep"}"\n'
                     '[[datasets]]\nname = "linear_sem"\n')
    status = cli("sweep", "status", sweep)
    assert status.returncode == 0, status.stderr
    assert [line for line in status.stderr.splitlines() if "warning" in line] == [expected + ": its values were "
                                                                                             "tuned for other data"]


def test_irm_paper_fishr_is_the_fishr_codes_colored_mnist_run():
    # Rame et al. 2022's Colored MNIST code: IRM's tuned run, no moving average (in every
    # draw), summed distance, weight 1.0 before the anneal, loss divided by the weight
    spec = make_spec("cfmnist_irm", "fishr", device="cpu")
    assert {k: spec.hparams[k] for k in ("hidden_dim", "lr", "l2", "anneal_iters", "penalty_weight")} == {
        "hidden_dim": 390, "lr": 0.0004898536566546834, "l2": 0.00110794568, "anneal_iters": 190,
        "penalty_weight": 91257.18613115903}
    assert (spec.hparams["ema"], spec.hparams["distance"], spec.hparams["warmup_weight"]) == (0.0, "sum", 1.0)
    assert (spec.hparams["scale_loss"], spec.hparams["reset_optimizer"]) == (True, False)
    assert all(make_spec("cfmnist_irm", "fishr", hparams_seed=s, device="cpu").hparams["ema"] == 0.0 for s in (1, 2, 3))


def test_linear_unit_tests_protocol_has_the_codes_searches_and_its_and_mask():
    # Aubin et al.'s code: Adam lr 1e-3 (10^U(-4, -2)), weight decay 0 (10^U(-6, -2)); AND-mask
    # by plain gradient descent, tau 0.9 (U(0.8, 1)), lr 10^U(-4, 0), weight decay 10^U(-5, 0)
    space = hparam_space("erm", "example2")
    assert (space["lr"].default, str(space["lr"].search)) == (1e-3, str(LogUniform(-4, -2)))
    assert str(space["weight_decay"].search) == str(LogUniform(-6, -2)) and space["l2"].search is None
    andmask = hparam_space("andmask", "example2s")
    assert (andmask["variant"].default, andmask["tau"].default) == ("unit_tests", 0.9)
    assert str(andmask["lr"].search) == str(LogUniform(-4, 0))
    draws = [make_spec("example1", "andmask", hparams_seed=s, device="cpu").hparams for s in range(1, 30)]
    assert all(0.8 <= d["tau"] <= 1.0 and 1e-4 <= d["lr"] <= 1.0 and 1e-5 <= d["weight_decay"] <= 1.0 for d in draws)


def test_irm_paper_sd_is_the_gradient_starvation_papers_colored_mnist_run():
    spec = make_spec("cfmnist_irm", "sd", device="cpu")
    assert spec.steps == 2000 and spec.model == "mlp"
    assert {k: spec.hparams[k] for k in ("hidden_dim", "lr", "l2", "sd_reg", "sd_anneal_iters")} == {
        "hidden_dim": 300, "lr": 1e-4, "l2": 0.0, "sd_reg": 2e-5, "sd_anneal_iters": 450}
    assert make_spec("cfmnist_irm", "erm", device="cpu").steps == 500  # the others keep the protocol's


@pytest.mark.parametrize("method", ["ibirm", "iberm"])
def test_linear_unit_tests_put_the_bottleneck_on_the_output(method):
    # a linear featurizer is the identity: Ahuja et al.'s unit tests penalise the output's variance
    assert make_spec("example3s", method, device="cpu").hparams["bottleneck"] == "logits"
    assert hparam_space(method, "cmnist_domainbed")["bottleneck"].default == "features"
