"""`invbench compare`: Welch's t-test per cell; exit 1 on a significant drop, 0 on a same-code rerun."""

import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import golden_toy  # noqa: E402,F401  (registers the test-only dataset)


from invbench.results.compare import compare_frames, per_trial_values, welch  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def test_welch_matches_the_closed_form_for_four_degrees_of_freedom():
    # means 2 and 5, both sample variances 1, n = 3: SE = sqrt(2/3), t = 3 / SE,
    # Welch's df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4; Student's t with 4 df has the CDF
    # F(t) = 1/2 + (3/4) x - (1/4) x^3 with x = t / sqrt(4 + t^2).
    se, p = welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert se == pytest.approx(math.sqrt(2 / 3))
    t = 3 / math.sqrt(2 / 3)
    x = t / math.sqrt(4 + t * t)  # sin(theta) with t = 2 tan(theta)
    cdf = 0.5 + 0.75 * x - 0.25 * x ** 3  # Student t, 4 df
    assert p == pytest.approx(2 * (1 - cdf), rel=1e-9)


def test_welch_edge_cases():
    assert all(math.isnan(v) for v in welch([1.0], [1.0, 2.0]))
    assert welch([0.5, 0.5], [0.5, 0.5]) == (0.0, 1.0)
    assert welch([0.5, 0.5], [0.4, 0.4]) == (0.0, 0.0)


def frame(values, metric="acc", method="erm"):
    return pd.DataFrame([{"dataset": "d", "source": "s", "selection": "last", "method": method, "column": "e",
                          "metric": metric, "trial": i, "value": v, "run": f"r{i}", "step": 10}
                         for i, v in enumerate(values)])


@pytest.mark.parametrize("base, cur, metric, verdict", [
    ([0.70, 0.71, 0.72], [0.60, 0.61, 0.62], "acc", "regression"),  # -10 points, p < 0.05
    ([0.700, 0.701, 0.702], [0.695, 0.696, 0.697], "acc", "worse"),  # -0.5 points, p < 0.01: under the threshold
    ([0.70, 0.71, 0.72], [0.695, 0.705, 0.715], "acc", "unchanged"),  # -0.5 points, p = 0.57
    ([0.70, 0.80, 0.60], [0.65, 0.75, 0.55], "acc", "unchanged"),  # -5 points but p = 0.58
    ([0.70, 0.71, 0.72], [0.80, 0.81, 0.82], "acc", "better"),
    ([10.0, 10.1, 10.2], [12.0, 12.1, 12.2], "mse", "regression"),  # MSE up by 20 %
    ([10.0, 10.01, 10.02], [10.2, 10.21, 10.22], "mse", "worse"),  # up by 2 %, p < 0.01: under 5 %
    ([10.0, 10.1, 10.2], [9.0, 9.1, 9.2], "mse", "better"),  # lower MSE is better
    ([0.70], [0.10], "acc", "untested"),  # one trial: no test, no claim
    ([0.70, 0.70], [0.70 + 1e-9, 0.70 + 1e-9], "acc", "unchanged"),  # float noise, zero variance
    ([0.70, 0.71, 0.72], [0.70 + 1e-9, 0.71 + 1e-9, 0.72 + 1e-9], "acc", "unchanged"),  # p = 1
    ([1.0, 1.1, 1.2], [5.0, 5.1, 5.2], "undeclared_extra", "changed"),  # no direction: never a regression
])
def test_verdicts(base, cur, metric, verdict):
    (result,), only_base, only_cur = compare_frames(frame(base, metric), frame(cur, metric), alpha=0.05)
    assert result.verdict == verdict and not only_base and not only_cur


def test_a_difference_within_float_noise_is_unchanged_whatever_its_p_value():
    (result,), _, _ = compare_frames(frame([0.5, 0.5, 0.5]), frame([0.5 + 1e-9] * 3))
    assert result.p == 1.0 and result.verdict == "unchanged"


def test_thresholds_come_from_each_metric_or_from_the_command_line():
    # accuracy: 1 point by default; -0.5 points is a regression under a 0.2-point threshold
    base, cur = frame([0.700, 0.701, 0.702]), frame([0.695, 0.696, 0.697])
    assert compare_frames(base, cur)[0][0].verdict == "worse"
    assert compare_frames(base, cur, threshold={"acc": 0.2})[0][0].verdict == "regression"
    assert compare_frames(base, cur, threshold={None: 0.2})[0][0].verdict == "regression"
    # MSE: 5 % of the baseline's mean; +2 % regresses at 1 %
    base, cur = frame([10.0, 10.01, 10.02], "mse"), frame([10.2, 10.21, 10.22], "mse")
    assert compare_frames(base, cur, threshold={"mse": 1.0})[0][0].verdict == "regression"
    assert compare_frames(base, cur, threshold={"acc": 0.0})[0][0].verdict == "worse"


def test_the_rule_line_speaks_of_the_compared_metric_in_its_own_units():
    from invbench.results.compare import comparison_markdown

    mse = compare_frames(frame([10.0, 10.1, 10.2], "mse"), frame([12.0, 12.1, 12.2], "mse"))[0]
    text = comparison_markdown(mse, [], [], None, 0.05)
    first = text.splitlines()[0]
    assert "accuracy" not in first and "points" not in first
    assert "5% of the baseline's mean MSE" in first and "p < 0.05" in first
    acc = compare_frames(frame([0.70, 0.71, 0.72]), frame([0.60, 0.61, 0.62]))[0]
    assert "1 percentage point of accuracy" in comparison_markdown(acc, [], [], None, 0.05).splitlines()[0]


def test_cells_on_one_side_are_listed_not_compared():
    results, only_base, only_cur = compare_frames(frame([0.7, 0.7]), frame([0.7, 0.7], method="irm"))
    assert results == [] and only_base == [("d", "s", "e", "erm", "e", "acc")] \
        and only_cur == [("d", "s", "e", "irm", "e", "acc")]


# A real sweep made twice by the runner: the same code must pass, a planted drop must fail.

def _sweep(out):
    from invbench.runner import run
    from invbench.spec import make_spec

    for trial in range(6):
        run(make_spec("golden_toy", "erm", test_envs=(1,), trial=trial, overrides={"batch_size": 0}, steps=20,
                      eval_every=10, device="cpu"), out)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    _sweep(root / "baseline")
    _sweep(root / "rerun")
    planted = root / "planted"
    shutil.copytree(root / "rerun", planted)
    for metrics in planted.rglob("metrics.jsonl"):  # the test env's accuracy drops by 20 points
        lines = []
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            record["envs"]["e=0.2"]["train"]["acc"] -= 0.2
            lines.append(json.dumps(record))
        metrics.write_text("\n".join(lines) + "\n")
    return root


def test_compare_passes_on_a_rerun_with_the_same_code(sweeps, invbench):
    result = invbench("compare", sweeps / "baseline", sweeps / "rerun", "--selection", "last")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| golden_toy | golden_toy (n=750) | e=0.2 | erm | e=0.2 | acc | 6/6 |" in result.stdout
    assert "0 regression(s) in 1 compared cell(s)." in result.stdout


def test_compare_fails_on_a_planted_regression(sweeps, invbench):
    result = invbench("compare", sweeps / "baseline", sweeps / "planted", "--selection", "last")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "| -20 |" in result.stdout and "REGRESSION" in result.stdout


def test_compare_reads_a_saved_baseline_file(sweeps, invbench, tmp_path):
    saved = tmp_path / "baseline.csv"
    assert invbench("collect", sweeps / "baseline", "--selection", "last", "--save-baseline", saved).returncode == 0
    assert set(per_trial_values(saved, "last")["trial"]) == set(range(6))
    assert invbench("compare", saved, sweeps / "rerun", "--selection", "last").returncode == 0
    assert invbench("compare", saved, sweeps / "planted", "--selection", "last").returncode == 1
    wrong = invbench("compare", saved, sweeps / "rerun", "--selection", "oracle")
    assert wrong.returncode == 2 and "has no values for selection 'oracle'; it has last" in wrong.stderr


def test_compare_rejects_a_path_that_is_neither(invbench, tmp_path):
    result = invbench("compare", tmp_path / "nowhere", tmp_path)
    assert result.returncode == 2 and "neither a folder of run directories nor a baseline CSV" in result.stderr


def test_compare_defaults_to_the_baseline_files_selection(sweeps, invbench, tmp_path):
    saved = tmp_path / "baseline.csv"
    assert invbench("collect", sweeps / "baseline", "--selection", "last", "--save-baseline", saved).returncode == 0
    result = invbench("compare", saved, sweeps / "planted")
    assert result.returncode == 1 and "REGRESSION" in result.stdout
    assert f"invbench: selection last (that of {saved}" in result.stderr


def test_threshold_per_metric_on_the_command_line(sweeps, invbench):
    # the planted drop is 20 points: no regression under a 25-point threshold for accuracy
    result = invbench("compare", sweeps / "baseline", sweeps / "planted", "--selection", "last", "--threshold", "acc=25")
    assert result.returncode == 0 and "25 percentage points of accuracy" in result.stdout
    bad = invbench("compare", sweeps / "baseline", sweeps / "planted", "--threshold", "acc=much")
    assert bad.returncode == 2 and "--threshold must be VALUE or METRIC=VALUE with VALUE >= 0; got 'acc=much'" in bad.stderr


def test_metrics_that_share_a_threshold_are_named_together_once():
    from invbench.results.compare import rule_text

    rule = rule_text(["mse", "causal_error", "noncausal_error"], None, 0.05)
    assert rule.count("5% of the baseline's mean") == 1, rule
    assert "MSE" in rule and "causal coefficient error" in rule and "non-causal coefficient error" in rule


def test_moved_lists_every_value_that_changed_and_cells_on_one_side(tmp_path):
    import pandas as pd

    from invbench.results.compare import BASELINE_COLUMNS, moved_values

    def frame(rows):
        return pd.DataFrame([{"dataset": "d", "source": "s", "selection": "last", "test_envs": "e", "run": "r",
                              "step": 1, **row} for row in rows], columns=BASELINE_COLUMNS)

    base = frame([{"method": "erm", "column": "e", "metric": "acc", "trial": 0, "value": 0.5},
                  {"method": "erm", "column": "e", "metric": "acc", "trial": 1, "value": 0.6},
                  {"method": "irm", "column": "e", "metric": "acc", "trial": 0, "value": 0.7}])
    cur = frame([{"method": "erm", "column": "e", "metric": "acc", "trial": 0, "value": 0.5 + 1e-9},
                 {"method": "erm", "column": "e", "metric": "acc", "trial": 1, "value": 0.61},
                 {"method": "vrex", "column": "e", "metric": "acc", "trial": 0, "value": 0.7}])
    lines = moved_values(base, cur, 1e-6)
    assert lines == ["d / s / e / irm / e / acc / trial 0: only in the baseline (0.7)",
                     "d / s / e / vrex / e / acc / trial 0: only in the current runs (0.7)",
                     "d / s / e / erm / e / acc / trial 1: 0.6 -> 0.61"]
    assert moved_values(base, base, 0.0) == []
