"""Aggregation: mean +- standard error over trials, average and worst env, missing cells."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from fake_runs import record, write_run  # noqa: E402

from invbench.results.aggregate import AVG, WORST, build_leaderboard, mean_se  # noqa: E402
from invbench.results.load import load_runs  # noqa: E402
from invbench.results.selection import LastCheckpoint, LeaveOneEnvironmentOut  # noqa: E402


def test_mean_se_closed_form():
    mean, se = mean_se([1.0, 2.0, 6.0])  # mean 3, sample var (4 + 1 + 9) / 2 = 7
    assert mean == 3.0 and se == pytest.approx(math.sqrt(7 / 3))
    assert mean_se([0.4]) == (0.4, None)


def _domainbed_sweep(root, values):
    """values[test env][trial] = that run's last-step score of its test env (envs a, b, c)."""
    envs = ("a", "b", "c")
    for t, per_trial in values.items():
        for trial, v in enumerate(per_trial):
            scores = {e: {"train": v if e == envs[t] else 0.99} for e in envs}
            write_run(root, test_envs=(t,), trial=trial, records=[record(10, scores)])


def test_env_columns_average_and_worst_per_trial(tmp_path):
    _domainbed_sweep(tmp_path, {0: [0.7, 0.8], 1: [0.6, 0.9], 2: [0.1, 0.5]})
    (table,) = build_leaderboard(load_runs(tmp_path), LastCheckpoint()).tables
    assert table.columns == ["a", "b", "c", AVG, WORST]
    trials, cells = table.rows["erm"]
    assert trials == 2
    assert (cells["a"].mean, cells["a"].se, cells["a"].n) == (pytest.approx(0.75), pytest.approx(0.05), 2)
    # per trial: avg (0.7+0.6+0.1)/3 = 0.4667, (0.8+0.9+0.5)/3 = 0.7333; worst 0.1, 0.5
    assert cells[AVG].mean == pytest.approx(0.6) and cells[AVG].se == pytest.approx((0.7333333 - 0.4666667) / 2)
    assert cells[WORST].mean == pytest.approx(0.3) and cells[WORST].se == pytest.approx(0.2)


def test_avg_uses_only_trials_with_every_env_and_says_so(tmp_path):
    _domainbed_sweep(tmp_path, {0: [0.7, 0.8], 1: [0.6, 0.9], 2: [0.1]})
    (table,) = build_leaderboard(load_runs(tmp_path), LastCheckpoint()).tables
    trials, cells = table.rows["erm"]
    assert cells["c"].n == 1 and cells["c"].se is None
    assert cells[AVG].n == 1 and cells[AVG].mean == pytest.approx((0.7 + 0.6 + 0.1) / 3)
    assert "1 trial(s) with every environment" in cells[AVG].note


def test_a_method_without_runs_for_an_env_says_no_runs(tmp_path):
    _domainbed_sweep(tmp_path, {0: [0.7], 1: [0.6]})
    write_run(tmp_path, method="irm", test_envs=(0,), records=[record(10, {"a": {"train": 0.5}})])
    (table,) = build_leaderboard(load_runs(tmp_path), LastCheckpoint()).tables
    assert table.rows["irm"][1]["b"].note == "no runs"
    assert table.rows["irm"][1][AVG].note == "needs a value in every environment column"


def test_leave_one_out_helpers_are_not_columns_and_missing_ones_are_named(tmp_path):
    _domainbed_sweep(tmp_path, {0: [0.7], 1: [0.6], 2: [0.2]})
    write_run(tmp_path, test_envs=(0, 1), records=[record(10, {"a": {"train": 0.1}, "b": {"train": 0.1}, "c": {"train": 0.9}})])
    (table,) = build_leaderboard(load_runs(tmp_path), LeaveOneEnvironmentOut()).tables
    assert table.columns == ["a", "b", "c", AVG, WORST]
    note = table.rows["erm"][1]["a"].note
    assert note.startswith("needs runs that were not launched") and "{a, c}" in note


def test_a_multi_env_test_set_without_single_runs_gets_its_own_columns(tmp_path):
    write_run(tmp_path, test_envs=(1, 2), records=[record(10, {"a": {"train": 0.9}, "b": {"train": 0.4}, "c": {"train": 0.2}})])
    (table,) = build_leaderboard(load_runs(tmp_path), LastCheckpoint()).tables
    assert table.columns == ["b [test b+c]", "c [test b+c]", AVG, WORST]
    assert table.rows["erm"][1][WORST].mean == pytest.approx(0.2)


def test_regression_worst_is_the_highest_mse(tmp_path):
    for t, v in ((0, 4.0), (1, 9.0)):
        scores = {e: {"train": v if i == t else 1.0} for i, e in enumerate(("a", "b", "c"))}
        write_run(tmp_path, test_envs=(t,), task="regression", records=[record(10, scores, metric="mse")])
    (table,) = build_leaderboard(load_runs(tmp_path), LastCheckpoint()).tables
    assert table.metric == "mse" and table.rows["erm"][1][WORST].mean == 9.0
