"""Selection strategies on handmade records whose answers are worked out by hand."""

import pandas as pd
import pytest

from invbench.errors import ConfigError
from invbench.results.selection import (NO_VAL, NOT_LAUNCHED, Candidate, LastCheckpoint, LeaveOneEnvironmentOut,
                                         Missing, Selected, TestDomainOracle, TrainingDomainValidation, get_strategy)

ENVS = ("a", "b", "c")


def cand(name, scores, *, test=("c",), seed=0, config=None, higher=True, extras=None):
    """scores: {(env, split): [value per step]}, steps 0, 10, 20, ..."""
    n = len(next(iter(scores.values())))
    frame = pd.DataFrame(scores, index=range(0, 10 * n, 10))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    ex = pd.DataFrame(extras, index=frame.index) if extras else None
    return Candidate(run=name, config=config or f"cfg{seed}", hparams_seed=seed, test_envs=tuple(test),
                     train_envs=tuple(e for e in ENVS if e not in test), higher_is_better=higher, scores=frame, extras=ex)


def test_training_domain_picks_best_checkpoint_then_best_draw():
    # draw 0: mean val of a, b = [0.5, 0.7, 0.65] -> step 10 (0.7)
    # draw 1: mean val of a, b = [0.6, 0.65, 0.75] -> step 20 (0.75), the better draw
    d0 = cand("r0", {("a", "val"): [0.5, 0.8, 0.6], ("b", "val"): [0.5, 0.6, 0.7],
                     ("c", "train"): [0.1, 0.2, 0.3], ("c", "val"): [0.9, 0.9, 0.9]}, seed=0)
    d1 = cand("r1", {("a", "val"): [0.6, 0.7, 0.9], ("b", "val"): [0.6, 0.6, 0.6],
                     ("c", "train"): [0.11, 0.22, 0.33], ("c", "val"): [0.0, 0.0, 0.0]}, seed=1)
    assert TrainingDomainValidation().select([d0, d1], ("c",), "c") == Selected("r1", 20, 0.33)


def test_training_domain_breaks_ties_by_earliest_step_then_lowest_seed():
    same = {("a", "val"): [0.7, 0.7], ("b", "val"): [0.7, 0.7]}
    d0 = cand("r0", {**same, ("c", "train"): [0.4, 0.5]}, seed=0)
    d1 = cand("r1", {**same, ("c", "train"): [0.6, 0.8]}, seed=1)
    assert TrainingDomainValidation().select([d1, d0], ("c",), "c") == Selected("r0", 0, 0.4)


def test_training_domain_minimises_mse_for_regression():
    d0 = cand("r0", {("a", "val"): [5.0, 2.0, 3.0], ("b", "val"): [5.0, 2.0, 1.0],
                     ("c", "train"): [9.0, 8.0, 7.0]}, higher=False)  # means 5, 2, 2 -> step 10
    assert TrainingDomainValidation().select([d0], ("c",), "c") == Selected("r0", 10, 8.0)


def test_training_domain_without_val_split_says_so():
    d0 = cand("r0", {("a", "train"): [0.5], ("b", "train"): [0.5], ("c", "train"): [0.5]})
    choice = TrainingDomainValidation().select([d0], ("c",), "c")
    assert isinstance(choice, Missing) and NO_VAL in choice.reason


def test_reported_split_is_test_when_the_dataset_has_one():
    d0 = cand("r0", {("a", "val"): [0.5], ("b", "val"): [0.5], ("c", "train"): [0.1], ("c", "test"): [0.42]})
    assert TrainingDomainValidation().select([d0], ("c",), "c").value == 0.42


def test_selected_carries_the_extras_of_its_checkpoint():
    d0 = cand("r0", {("a", "val"): [0.1, 0.9], ("b", "val"): [0.1, 0.9], ("c", "train"): [0.1, 0.2]},
              extras={"causal_error": [3.0, 0.25]})
    assert TrainingDomainValidation().select([d0], ("c",), "c").extras == {"causal_error": 0.25}


def test_oracle_uses_the_test_env_val_at_the_last_checkpoint_only():
    # r0 has the best test val at step 0 (0.95) but the worst at the last step (0.1).
    d0 = cand("r0", {("a", "val"): [0.9, 0.9], ("b", "val"): [0.9, 0.9],
                     ("c", "train"): [0.8, 0.15], ("c", "val"): [0.95, 0.1]}, seed=0)
    d1 = cand("r1", {("a", "val"): [0.1, 0.1], ("b", "val"): [0.1, 0.1],
                     ("c", "train"): [0.3, 0.55], ("c", "val"): [0.2, 0.5]}, seed=1)
    assert TestDomainOracle().select([d0, d1], ("c",), "c") == Selected("r1", 10, 0.55)


def test_oracle_without_test_val_split_says_so():
    d0 = cand("r0", {("a", "val"): [0.5], ("b", "val"): [0.5], ("c", "train"): [0.5]})
    assert NO_VAL in TestDomainOracle().select([d0], ("c",), "c").reason


def test_last_checkpoint_reports_the_final_step_without_val():
    d0 = cand("r0", {("a", "train"): [0.5, 0.6, 0.7], ("c", "train"): [0.2, 0.9, 0.35]})
    # with the training environments' mean "train" score at that step (only a has one): 0.7
    assert LastCheckpoint().select([d0], ("c",), "c") == Selected("r0", 20, 0.35, {"train envs": 0.7})


def test_last_checkpoint_refuses_to_choose_between_configurations():
    d0 = cand("r0", {("c", "train"): [0.5]}, seed=0)
    d1 = cand("r1", {("c", "train"): [0.6]}, seed=1)
    choice = LastCheckpoint().select([d0, d1], ("c",), "c")
    assert isinstance(choice, Missing) and "2 hyperparameter configurations" in choice.reason


def _loo_runs(config, seed, b_scores, c_scores, a_scores):
    """Runs for test env a: (a,) reports a; (a, b) validates on b; (a, c) validates on c."""
    base = cand(f"{config}-a", {("a", "train"): a_scores, ("b", "train"): [0, 0, 0], ("c", "train"): [0, 0, 0]},
                test=("a",), seed=seed, config=config)
    ab = cand(f"{config}-ab", {("a", "train"): [0, 0, 0], ("b", "train"): b_scores, ("c", "train"): [0, 0, 0]},
              test=("a", "b"), seed=seed, config=config)
    ac = cand(f"{config}-ac", {("a", "train"): [0, 0, 0], ("b", "train"): [0, 0, 0], ("c", "train"): c_scores},
              test=("a", "c"), seed=seed, config=config)
    return [base, ab, ac]


def test_leave_one_out_validates_on_each_held_out_training_env():
    # X: mean of b (in run ab) and c (in run ac) per step = [0.5, 0.6, 0.55] -> step 10 (0.6)
    # Y: = [0.4, 0.5, 0.7] -> step 20 (0.7): Y wins; report a from Y's (a,) run at step 20.
    x = _loo_runs("X", 0, [0.4, 0.6, 0.5], [0.6, 0.6, 0.6], [0.11, 0.12, 0.13])
    y = _loo_runs("Y", 1, [0.4, 0.4, 0.8], [0.4, 0.6, 0.6], [0.21, 0.22, 0.23])
    # the (a,) run's training envs b and c score 0 on "train" at step 20
    assert LeaveOneEnvironmentOut().select(x + y, ("a",), "a") == Selected("Y-a", 20, 0.23, {"train envs": 0.0})


def test_leave_one_out_names_the_runs_that_were_not_launched():
    x = _loo_runs("X", 0, [0.4, 0.6, 0.5], [0.6, 0.6, 0.6], [0.11, 0.12, 0.13])
    choice = LeaveOneEnvironmentOut().select([x[0], x[1]], ("a",), "a")  # (a, c) missing
    assert isinstance(choice, Missing)
    assert NOT_LAUNCHED in choice.reason and "{a, c}" in choice.reason


def test_leave_one_out_needs_a_single_test_env():
    x = _loo_runs("X", 0, [0.4, 0.6, 0.5], [0.6, 0.6, 0.6], [0.11, 0.12, 0.13])
    assert NOT_LAUNCHED in LeaveOneEnvironmentOut().select(x, ("a", "b"), "a").reason


def test_strategies_say_no_runs_for_an_empty_test_set():
    d0 = cand("r0", {("a", "val"): [0.5], ("b", "val"): [0.5], ("c", "train"): [0.5], ("c", "val"): [0.5]})
    for strategy in (TrainingDomainValidation(), TestDomainOracle(), LastCheckpoint(), LeaveOneEnvironmentOut()):
        assert strategy.select([d0], ("b",), "b") == Missing("no runs")


def test_unknown_strategy_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="training_domain, loo, oracle, last"):
        get_strategy("best")
