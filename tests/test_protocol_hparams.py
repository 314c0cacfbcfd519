"""A dataset's protocol sets hyperparameter defaults and searches, for methods too."""

import warnings

import pytest

from invbench.spec import HParamWarning, make_spec


def draws(dataset, method, name, n=40):
    return [make_spec(dataset, method, hparams_seed=seed).hparams[name] for seed in range(1, n + 1)]


def test_domainbed_protocol_never_draws_weight_decay_or_l2():
    assert set(draws("cmnist_domainbed", "erm", "weight_decay")) == {0.0}
    assert set(draws("cmnist_domainbed", "erm", "l2")) == {0.0}
    lrs = draws("cmnist_domainbed", "erm", "lr")
    assert len(set(lrs)) == len(lrs) and all(10 ** -4.5 <= lr <= 10 ** -2.5 for lr in lrs)


@pytest.mark.filterwarnings("ignore::invbench.spec.HParamWarning")
def test_irm_protocol_draws_from_the_irm_papers_ranges():
    # docs/protocols.md section 1: lr 10^U(-3.5,-2.5), anneal randint(50,250), penalty 10^U(2,6),
    # hidden int(2^U(6,9)), l2 10^U(-5,-2), no weight decay
    assert all(10 ** -3.5 <= v <= 10 ** -2.5 for v in draws("cmnist_irm", "irm", "lr"))
    assert all(50 <= v < 250 for v in draws("cmnist_irm", "irm", "anneal_iters"))
    assert all(1e2 <= v <= 1e6 for v in draws("cmnist_irm", "irm", "penalty_weight"))
    assert all(64 <= v <= 512 for v in draws("cmnist_irm", "irm", "hidden_dim"))
    assert set(draws("cmnist_irm", "irm", "weight_decay")) == {0.0}
    # the same names on another dataset keep the method's own (DomainBed) search
    assert max(draws("linear_sem", "irm", "anneal_iters")) >= 250


def test_irm_protocol_defaults_switch_the_penalty_on_within_its_steps():
    spec = make_spec("cmnist_irm", "irm")
    assert spec.steps == 500
    assert spec.hparams["anneal_iters"] == 190 and spec.hparams["penalty_weight"] == pytest.approx(91257.186)
    assert spec.hparams["estimator"] == "full_batch" and spec.hparams["scale_loss"] is True
    # ERM has none of these names: the protocol's method defaults are ignored for it
    assert "anneal_iters" not in make_spec("cmnist_irm", "erm").hparams


def test_a_penalty_that_never_switches_on_is_warned_about():
    with pytest.warns(HParamWarning, match="anneal_iters=500 >= steps=100"):
        make_spec("linear_sem", "vrex", steps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_spec("linear_sem", "vrex", steps=1000)
        make_spec("linear_sem", "vrex", steps=100, overrides={"penalty_weight": 1.0})
        make_spec("cmnist_irm", "irm")


def test_linear_sem_defaults_to_the_full_batch_irm_estimator():
    hp = make_spec("linear_sem", "irm").hparams
    assert (hp["estimator"], hp["penalty_weight"]) == ("full_batch", 10.0)
