"""The papers' own selections on handmade records whose answers are worked out by hand:
the linear unit tests' one configuration across trials, the IRM paper's SEM selection on the
test environment, and what every strategy does when no environment was held out."""

from dataclasses import replace

import pandas as pd
import pytest

from invbench.errors import ConfigError
from invbench.results.selection import (CONFIG_ACROSS_TRIALS, NO_TEST_ENV, NO_VAL, SELECTIONS, STRATEGIES, TEST_ENV_LAST,
                                         Candidate, ConfigurationAcrossTrials, LastCheckpoint, LeaveOneEnvironmentOut,
                                         Missing, Selected, TestDomainOracle, TestEnvironmentLast,
                                         TrainingDomainValidation, get_strategy)

ENVS = ("a", "b", "c")


def cand(name, scores, *, test=(), seed=0, config=None, higher=False, extras=None):
    """scores: {(env, split): [value per step]} at steps 0, 10, ...; MSE (lower is better) unless ``higher``."""
    n = len(next(iter(scores.values())))
    frame = pd.DataFrame(scores, index=range(0, 10 * n, 10))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    ex = pd.DataFrame(extras, index=frame.index) if extras else None
    return Candidate(run=name, config=config or f"cfg{seed}", hparams_seed=seed, test_envs=tuple(test),
                     train_envs=tuple(e for e in ENVS if e not in test), higher_is_better=higher, scores=frame, extras=ex)


def pooled(name, seed, val_last, test_last, *, val_first=(9.0, 9.0, 9.0), extras=None):
    """A run that trained on a, b and c: two steps; val_last / test_last: each env's final "val" / "test"."""
    scores = {}
    for env, first, last, test in zip(ENVS, val_first, val_last, test_last):
        scores[(env, "val")] = [first, last]
        scores[(env, "test")] = [100.0, test]
    return cand(name, scores, seed=seed, extras=extras)


# One configuration across trials (Aubin et al. 2021) --------------------------------------

def unit_test_cell():
    """Three configurations X (seed 0), Y (seed 1), Z (seed 2) in two trials.

    Summed final "val" MSE over a, b, c:  trial 0: X 3, Y 2, Z 5;  trial 1: X 3, Y 6, Z 5.
    Per trial the best would be Y (trial 0) and X (trial 1); averaged over the trials X 3,
    Y 4, Z 5: X, reported in both trials. At step 0 Y's val is the best of all (0.3): the
    final iterate counts, not the best step.
    """
    return {
        0: [pooled("X0", 0, (1.0, 1.0, 1.0), (0.11, 0.12, 0.13), extras={"causal_error": [7.0, 0.5]}),
            pooled("Y0", 1, (0.5, 0.5, 1.0), (0.21, 0.22, 0.23), val_first=(0.1, 0.1, 0.1)),
            pooled("Z0", 2, (2.0, 2.0, 1.0), (0.31, 0.32, 0.33))],
        1: [pooled("X1", 0, (1.0, 1.0, 1.0), (0.41, 0.42, 0.43), extras={"causal_error": [7.0, 0.25]}),
            pooled("Y1", 1, (2.0, 2.0, 2.0), (0.51, 0.52, 0.53), val_first=(0.1, 0.1, 0.1)),
            pooled("Z1", 2, (2.0, 2.0, 1.0), (0.61, 0.62, 0.63))],
    }


def test_config_across_trials_reports_the_configuration_best_on_average_in_every_trial():
    choices = ConfigurationAcrossTrials().select_cell(unit_test_cell(), (), "b")
    # X's "test" split of b at the last step (10) in each trial, with its extras there
    assert choices == {0: Selected("X0", 10, 0.12, {"causal_error": 0.5}),
                       1: Selected("X1", 10, 0.42, {"causal_error": 0.25})}


def test_per_trial_selection_would_choose_differently_in_the_same_cell():
    # the contrast that makes the test above mean something: one trial alone picks Y
    assert ConfigurationAcrossTrials().select(unit_test_cell()[0], (), "b").run == "Y0"
    assert TrainingDomainValidation().select(unit_test_cell()[0], (), "b").run == "Y0"  # Y's best step is 0


def test_config_across_trials_breaks_a_tie_by_the_lowest_hyperparameter_seed():
    # V (seed 3) and W (seed 1) both average 3 (trial 0: V 2, W 4; trial 1: V 4, W 2); W wins
    cell = {0: [pooled("V0", 3, (1.0, 0.5, 0.5), (0.1, 0.1, 0.1)), pooled("W0", 1, (2.0, 1.0, 1.0), (0.2, 0.2, 0.2))],
            1: [pooled("V1", 3, (2.0, 1.0, 1.0), (0.3, 0.3, 0.3)), pooled("W1", 1, (1.0, 0.5, 0.5), (0.4, 0.4, 0.4))]}
    choices = ConfigurationAcrossTrials().select_cell(cell, (), "a")
    assert (choices[0].run, choices[1].run) == ("W0", "W1")
    # the same with the seeds the other way round: the tie goes to V
    swapped = {t: [replace(c, hparams_seed=4 - c.hparams_seed) for c in runs] for t, runs in cell.items()}
    assert [c.run for c in ConfigurationAcrossTrials().select_cell(swapped, (), "a").values()] == ["V0", "V1"]


def test_config_across_trials_validates_on_the_training_environments_only():
    # test env c: P's c "val" is the worst (50) but its a + b val is the best (2 against 3)
    p = cand("P", {("a", "val"): [1.0], ("b", "val"): [1.0], ("c", "val"): [50.0], ("c", "train"): [0.7]},
             test=("c",), seed=0)
    q = cand("Q", {("a", "val"): [1.5], ("b", "val"): [1.5], ("c", "val"): [0.0], ("c", "train"): [0.9]},
             test=("c",), seed=1)
    assert ConfigurationAcrossTrials().select([q, p], ("c",), "c") == Selected("P", 0, 0.7)


def test_config_across_trials_maximises_accuracy():
    p = cand("P", {("a", "val"): [0.6], ("b", "val"): [0.6], ("c", "train"): [0.3]}, test=("c",), seed=0, higher=True)
    q = cand("Q", {("a", "val"): [0.9], ("b", "val"): [0.9], ("c", "train"): [0.8]}, test=("c",), seed=1, higher=True)
    assert ConfigurationAcrossTrials().select([p, q], ("c",), "c").run == "Q"


def test_config_across_trials_says_when_the_chosen_configuration_lacks_a_trial():
    cell = unit_test_cell()
    cell[2] = [c for c in cell[1] if c.run != "X1"]  # trial 2: X did not finish; Y and Z did
    cell[2] = [replace(c, run=c.run.replace("1", "2")) for c in cell[2]]
    # means: X 3 (trials 0, 1), Y (2 + 6 + 6) / 3, Z 5: X still, and trial 2 has no X
    choices = ConfigurationAcrossTrials().select_cell(cell, (), "a")
    assert choices[0].run == "X0" and choices[1].run == "X1"
    assert isinstance(choices[2], Missing) and "hparams seed 0" in choices[2].reason


def test_config_across_trials_needs_a_val_split():
    runs = [cand("P", {("a", "test"): [0.5], ("b", "test"): [0.5], ("c", "test"): [0.5]})]
    choice = ConfigurationAcrossTrials().select(runs, (), "a")
    assert isinstance(choice, Missing) and NO_VAL in choice.reason


# The IRM paper's SEM selection: the test environment at the last checkpoint ---------------

def sem(name, seed, sigma5, *, val=(0.0, 0.0), extras=None):
    """A run with test env c: c's "train" (all of its data) and its a/b "val" per step."""
    return cand(name, {("a", "val"): list(val), ("b", "val"): list(val), ("c", "train"): list(sigma5)},
                test=("c",), seed=seed, extras=extras)


def test_test_env_last_picks_per_trial_the_lowest_test_environment_error_at_the_last_step():
    # final c error: R 4.0, S 2.5 (S's 0.5 at step 0 does not count), T 3.0. S has the
    # worst training-domain val (9) and its own extras are reported.
    r = sem("R", 0, (3.0, 4.0), extras={"causal_error": [1.0, 2.0]})
    s = sem("S", 1, (0.5, 2.5), val=(9.0, 9.0), extras={"causal_error": [1.5, 0.75]})
    t = sem("T", 2, (1.0, 3.0), extras={"causal_error": [3.0, 4.0]})
    assert TestEnvironmentLast().select([r, s, t], ("c",), "c") == Selected("S", 10, 2.5, {"causal_error": 0.75})
    assert TrainingDomainValidation().select([r, s, t], ("c",), "c").run != "S"


def test_test_env_last_chooses_in_each_trial_on_its_own():
    cell = {0: [sem("R0", 0, (0.0, 1.0)), sem("S0", 1, (0.0, 2.0))],
            1: [sem("R1", 0, (0.0, 2.0)), sem("S1", 1, (0.0, 1.0))]}
    assert {t: c.run for t, c in TestEnvironmentLast().select_cell(cell, ("c",), "c").items()} == {0: "R0", 1: "S1"}


def test_test_env_last_breaks_a_tie_by_the_lowest_seed():
    assert TestEnvironmentLast().select([sem("S", 5, (0.0, 2.0)), sem("R", 2, (0.0, 2.0))], ("c",), "c").run == "R"


def test_test_env_last_uses_the_test_split_where_the_dataset_has_one():
    p = cand("P", {("c", "train"): [0.1], ("c", "test"): [0.9]}, test=("c",), seed=0)
    q = cand("Q", {("c", "train"): [0.5], ("c", "test"): [0.4]}, test=("c",), seed=1)
    assert TestEnvironmentLast().select([p, q], ("c",), "c") == Selected("Q", 0, 0.4)


# Strategies without a test environment ---------------------------------------------------

def test_strategies_that_need_a_test_environment_say_so_when_every_environment_trained():
    runs = unit_test_cell()[0]
    for strategy in (LeaveOneEnvironmentOut(), TestDomainOracle(), TestEnvironmentLast()):
        choice = strategy.select(runs, (), "a")
        assert isinstance(choice, Missing) and choice.reason.startswith(NO_TEST_ENV), strategy.name


def test_training_domain_validation_and_the_last_checkpoint_work_without_a_test_environment():
    # validation over all three environments: Y0's step 0 (0.1 in each) is the best checkpoint
    assert TrainingDomainValidation().select(unit_test_cell()[0], (), "c") == Selected("Y0", 0, 100.0)
    only = [unit_test_cell()[0][0]]
    assert LastCheckpoint().select(only, (), "c") == Selected("X0", 10, 0.13, {"causal_error": 0.5})


# Registration ----------------------------------------------------------------------------

def test_both_are_registered_and_named_in_the_unknown_name_error():
    assert isinstance(get_strategy(CONFIG_ACROSS_TRIALS), ConfigurationAcrossTrials)
    assert isinstance(get_strategy(TEST_ENV_LAST), TestEnvironmentLast)
    assert {CONFIG_ACROSS_TRIALS, TEST_ENV_LAST} <= set(SELECTIONS)
    assert "IRM paper" in STRATEGIES[TEST_ENV_LAST].title
    assert "across trials" in STRATEGIES[CONFIG_ACROSS_TRIALS].title
    with pytest.raises(ConfigError, match="config_across_trials, test_env_last"):
        get_strategy("best")


@pytest.mark.parametrize("name", [CONFIG_ACROSS_TRIALS, TEST_ENV_LAST])
def test_a_protocol_may_name_them(name):
    from invbench.protocol import PROTOCOLS, check_protocol

    protocol = PROTOCOLS.get(PROTOCOLS.names()[0])
    check_protocol(replace(protocol, selection=name))
    with pytest.raises(ConfigError, match="unknown selection"):
        check_protocol(replace(protocol, selection="best"))
