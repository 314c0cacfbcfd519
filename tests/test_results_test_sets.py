"""Leaderboards of runs without a test environment, and of sweeps that mix test-set choices.

Real tiny runs made by the project's runner; every expected number is read from the runs'
metrics.jsonl directly, never from the results package.
"""

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from invbench.cli import main as cli_main

UNIT_ENVS = ("E0", "E1", "E2")


def _final(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def _spec(run_dir: Path) -> dict:
    return json.loads((run_dir / "spec.json").read_text())


def _mean(values):
    return sum(values) / len(values)


def _md_table(out: str, title_part: str) -> tuple[str, list[str], dict[str, list[str]]]:
    """(title, header, method -> cells) of the Markdown table whose title holds ``title_part``."""
    lines = out.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith("### ") and title_part in line]
    header = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    rows = {}
    for line in lines[start + 4:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return lines[start], header, rows


# The linear unit tests: every environment trains ------------------------------------------

@pytest.fixture(scope="module")
def unit_runs(tmp_path_factory):
    """example1 (n_per_env 200, 20 steps): ERM, two trials, as `invbench run` makes it."""
    root = tmp_path_factory.mktemp("unit")
    for trial in (0, 1):
        code = cli_main(["run", "-d", "example1", "-m", "erm", "--steps", "20", "--option", "n_per_env=200",
                         "--trial", str(trial), "--out", str(root), "--quiet"])
        assert code == 0
    return root


def _unit_finals(root):
    """Per trial: each environment's final "test" MSE, and the final "train" MSEs' mean."""
    finals = [_final(run) for run in sorted(root.iterdir())]
    tests = [{e: f["envs"][e]["test"]["mse"] for e in UNIT_ENVS} for f in finals]
    trains = [_mean([f["envs"][e]["train"]["mse"] for e in UNIT_ENVS]) for f in finals]
    return tests, trains


def test_runs_without_a_test_environment_get_every_environment_avg_and_worst_in_markdown(invbench, unit_runs):
    code, out, _ = invbench("collect", unit_runs, "--selection", "last")
    assert code == 0
    title, header, rows = _md_table(out, "example1")
    assert "trained on every environment" in title and "test split" in title
    assert header == ["method", "trials", "E0", "E1", "E2", "avg", "worst", "train envs"]
    tests, trains = _unit_finals(unit_runs)
    erm = rows["erm"]
    assert erm[1] == "2"
    for i, env in enumerate(UNIT_ENVS):
        assert erm[2 + i].startswith(f"{_mean([t[env] for t in tests]):.4g} ± ")
    # the unit tests' metric: per trial the mean over environments of the test error
    assert erm[5].startswith(f"{_mean([_mean(list(t.values())) for t in tests]):.4g} ± ")
    assert erm[6].startswith(f"{_mean([max(t.values()) for t in tests]):.4g} ± ")
    assert erm[7].startswith(f"{_mean(trains):.4g} ± ")


def test_runs_without_a_test_environment_in_csv_say_none_for_their_test_set(invbench, unit_runs):
    code, out, _ = invbench("collect", unit_runs, "--selection", "last", "--format", "csv")
    assert code == 0
    cells = {row["column"]: row for row in csv.DictReader(io.StringIO(out))}
    assert list(cells) == ["E0", "E1", "E2", "avg", "worst", "train envs"]
    assert {row["test_envs"] for row in cells.values()} == {"none"}
    tests, _ = _unit_finals(unit_runs)
    for env in UNIT_ENVS:
        assert float(cells[env]["mean"]) == pytest.approx(_mean([t[env] for t in tests]), rel=1e-12)
    assert float(cells["avg"]["mean"]) == pytest.approx(_mean([_mean(list(t.values())) for t in tests]), rel=1e-12)


def test_training_domain_validation_works_over_every_environment(invbench, unit_runs):
    code, out, _ = invbench("collect", unit_runs, "--selection", "training_domain", "--format", "csv")
    assert code == 0
    cells = {row["column"]: row for row in csv.DictReader(io.StringIO(out))}
    # per trial, the step with the lowest mean "val" MSE over E0, E1, E2; its E1 "test" MSE
    chosen = []
    for run in sorted(unit_runs.iterdir()):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        best = min(records, key=lambda r: _mean([r["envs"][e]["val"]["mse"] for e in UNIT_ENVS]))
        chosen.append(best["envs"]["E1"]["test"]["mse"])
    assert float(cells["E1"]["mean"]) == pytest.approx(_mean(chosen), rel=1e-12)


@pytest.mark.parametrize("selection, why", [("oracle", "the test-domain oracle selects on a test environment"),
                                            ("loo", "leave-one-out holds out"),
                                            ("test_env_last", "picks by a test environment's score")])
def test_selections_that_need_a_test_environment_say_why_not(invbench, unit_runs, selection, why):
    code, out, err = invbench("collect", unit_runs, "--selection", selection)
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert "no test environment, every environment trained" in line and why in line


def test_config_across_trials_reports_one_configuration_in_every_trial(invbench, tmp_path):
    # two draws (hparams seeds 0, 1: their own learning rates) x two trials
    for trial in (0, 1):
        for seed in (0, 1):
            assert invbench("run", "-d", "example1", "-m", "erm", "--steps", "20", "--option", "n_per_env=200",
                            "--trial", trial, "--hparams-seed", seed, "--out", tmp_path, "--quiet")[0] == 0
    code, out, _ = invbench("collect", tmp_path, "--selection", "config_across_trials", "--format", "csv")
    assert code == 0
    by_seed: dict[int, dict[int, dict]] = {}
    for run in tmp_path.iterdir():
        spec = _spec(run)
        by_seed.setdefault(spec["hparams_seed"], {})[spec["trial"]] = _final(run)
    summed_val = {seed: _mean([sum(f["envs"][e]["val"]["mse"] for e in UNIT_ENVS) for f in finals.values()])
                  for seed, finals in by_seed.items()}
    best = min(summed_val, key=lambda seed: (summed_val[seed], seed))
    cells = {row["column"]: row for row in csv.DictReader(io.StringIO(out))}
    expected = _mean([by_seed[best][t]["envs"]["E2"]["test"]["mse"] for t in (0, 1)])
    assert float(cells["E2"]["mean"]) == pytest.approx(expected, rel=1e-12) and cells["E2"]["n"] == "2"


# A sweep with test_envs = [[], [2]]: the IRM paper's pooled ERM beside its IRM ------------

@pytest.fixture(scope="module")
def mixed_runs(tmp_path_factory):
    from invbench.runner import run
    from invbench.spec import make_spec

    root = tmp_path_factory.mktemp("mixed")
    for method in ("erm", "irm"):
        for tests in ((), (2,)):
            for trial in (0, 1):
                irm = {"anneal_iters": 10} if method == "irm" else {}  # its penalty weight within 20 steps
                run(make_spec("linear_sem", method, test_envs=tests, trial=trial, steps=20, eval_every=10,
                              overrides=irm), root)
    return root


def _sem_finals(root, method, test_envs):
    runs = [r for r in sorted(root.iterdir()) if _spec(r)["method"] == method and _spec(r)["test_envs"] == test_envs]
    assert len(runs) == 2
    return [_final(r) for r in runs]


def test_each_test_set_choice_is_its_own_table_with_its_own_numbers(invbench, mixed_runs):
    code, out, _ = invbench("collect", mixed_runs, "--selection", "last")
    assert code == 0
    pooled_title, pooled_header, pooled = _md_table(out, "trained on every environment")
    held_title, held_header, held = _md_table(out, "test environment sigma=5")
    assert pooled_header[:7] == ["method", "trials", "sigma=0.2", "sigma=2", "sigma=5", "avg", "worst"]
    assert held_header[:3] == ["method", "trials", "sigma=5"]
    for method in ("erm", "irm"):
        own = _sem_finals(mixed_runs, method, [])
        other = _sem_finals(mixed_runs, method, [2])
        pooled_sigma5 = _mean([f["envs"]["sigma=5"]["train"]["mse"] for f in own])
        held_sigma5 = _mean([f["envs"]["sigma=5"]["train"]["mse"] for f in other])
        assert f"{pooled_sigma5:.4g}" != f"{held_sigma5:.4g}"  # else the test could not tell them apart
        assert pooled[method][4].startswith(f"{pooled_sigma5:.4g} ± ")
        assert held[method][2].startswith(f"{held_sigma5:.4g} ± ")
        # the extras come from each table's own runs
        causal = pooled_header.index("causal_error")
        assert pooled[method][causal].startswith(f"{_mean([f['extra']['causal_error'] for f in own]):.4g} ± ")


def test_per_trial_values_and_csv_carry_the_test_set(invbench, mixed_runs):
    from invbench.results.aggregate import collect

    frame = collect(mixed_runs, "last").per_trial
    sigma5 = frame[(frame["method"] == "erm") & (frame["column"] == "sigma=5")]
    assert sorted(sigma5["test_envs"]) == ["none", "none", "sigma=5", "sigma=5"]
    for test_envs, spec_tests in (("none", []), ("sigma=5", [2])):
        runs = sigma5[sigma5["test_envs"] == test_envs]["run"]
        assert all(_spec(mixed_runs / run)["test_envs"] == spec_tests for run in runs)
    code, out, _ = invbench("collect", mixed_runs, "--selection", "last", "--format", "csv")
    rows = [(r["method"], r["column"], r["test_envs"]) for r in csv.DictReader(io.StringIO(out))]
    assert ("erm", "sigma=5", "none") in rows and ("erm", "sigma=5", "sigma=5") in rows
    assert len(rows) == len(set(rows))  # no two cells share a name


def _held_out_only(root, out):
    """A copy of the runs with test environment sigma = 5 alone."""
    for run in root.iterdir():
        if _spec(run)["test_envs"] == [2]:
            shutil.copytree(run, out / run.name)
    return out


def test_compare_never_compares_two_test_set_choices(invbench, mixed_runs, tmp_path):
    held_only = _held_out_only(mixed_runs, tmp_path / "held")
    from invbench.results.compare import compare_frames, per_trial_values

    base, cur = per_trial_values(held_only, "last"), per_trial_values(mixed_runs, "last")
    compared, only_base, only_cur = compare_frames(base, cur)
    source = base["source"].iloc[0]
    assert ("linear_sem", source, "sigma=5", "erm", "sigma=5", "mse") in [c.key for c in compared]
    assert all(c.verdict == "unchanged" for c in compared)  # the same runs on both sides
    assert not only_base and ("linear_sem", source, "none", "erm", "sigma=5", "mse") in only_cur
    # through the command: the table names the test set of every compared cell
    baseline = tmp_path / "baseline.csv"
    assert invbench("collect", held_only, "--selection", "last", "--save-baseline", baseline)[0] == 0
    code, out, _ = invbench("compare", baseline, mixed_runs, "--selection", "last")
    assert code == 0
    assert f"| linear_sem | {source} | sigma=5 | erm | sigma=5 | mse | 2/2 |" in out
    assert f"- linear_sem, {source}, none, erm, sigma=5, mse" in out


def test_a_baseline_written_before_test_sets_were_recorded_still_compares(invbench, mixed_runs, tmp_path):
    held_only = _held_out_only(mixed_runs, tmp_path / "held")
    baseline = tmp_path / "baseline.csv"
    assert invbench("collect", held_only, "--selection", "last", "--save-baseline", baseline)[0] == 0
    lines = list(csv.DictReader(baseline.open()))
    old = tmp_path / "old.csv"  # the stable format's columns of before: no test_envs
    with old.open("w", newline="") as handle:
        columns = ["dataset", "source", "selection", "method", "column", "metric", "trial", "value", "run", "step"]
        writer = csv.DictWriter(handle, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)
    code, out, _ = invbench("compare", old, mixed_runs, "--selection", "last")
    assert code == 0, out
    assert "0 regression(s) in 6 compared cell(s)." in out  # erm, irm x sigma=5, causal, noncausal
    source = lines[0]["source"]
    assert f"| linear_sem | {source} | sigma=5 | irm | causal_error (sigma=5) | causal_error | 2/2 |" in out
    assert f"- linear_sem, {source}, none, irm, causal_error, causal_error" in out  # new, not compared


def test_each_choice_gets_its_own_plots(mixed_runs, tmp_path):
    from invbench.results.aggregate import build_leaderboard
    from invbench.results.load import load_runs
    from invbench.results.plots import write_plots
    from invbench.results.selection import LastCheckpoint

    results = load_runs(mixed_runs)
    board = build_leaderboard(results, LastCheckpoint())
    held, pooled = board.tables
    assert set(held.per_trial_of(board.per_trial)["test_envs"]) == {"sigma=5"}
    assert set(pooled.per_trial_of(board.per_trial)["test_envs"]) == {"none"}
    paths = write_plots(board, results.records, tmp_path)
    assert len(paths) == len({p.name for p in paths}) == 6  # envs, heatmap, curves per table
    assert sum("trained_on_every_env" in p.name for p in paths) == 3
