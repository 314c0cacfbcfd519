"""invbench reproduce: tidy files that rebuild the leaderboards, published numbers side by side
with ours, chunks that never lose finished runs, and the command's outputs and errors."""

import gzip
import json
from pathlib import Path

import pytest

from invbench.reproduce import published, tidy
from invbench.results.aggregate import build_leaderboard
from invbench.results.load import load_runs
from invbench.results.selection import get_strategy
from invbench.runner import run
from invbench.spec import make_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_runs(out, trials=(0, 1), methods=("erm", "irm"), steps=40):
    overrides = {"anneal_iters": 10}
    for method in methods:
        for trial in trials:
            run(make_spec("linear_sem", method, dataset_options={"n_per_env": 100}, trial=trial, steps=steps,
                          eval_every=20, overrides=overrides if method == "irm" else {}, device="cpu"), out)


def values(board):
    frame = board.per_trial.sort_values(["dataset", "method", "column", "trial"])
    return [(r.dataset, r.method, r.column, r.trial, float(r.value)) for r in frame.itertuples()]


@pytest.mark.parametrize("keep", ["last", "all"])
def test_tidy_files_rebuild_the_leaderboard_of_the_run_directories(tmp_path, keep):
    tiny_runs(tmp_path / "runs")
    results = load_runs(tmp_path / "runs")
    tidy.export(results, tmp_path / "out", keep)
    rebuilt = tidy.load(tmp_path / "out")
    for selection in ("last",):
        strategy = get_strategy(selection)
        assert values(build_leaderboard(rebuilt, strategy)) == values(build_leaderboard(results, strategy))
    steps = sorted(set(rebuilt.records["step"]))
    assert steps == ([40] if keep == "last" else [0, 20, 40])
    # what is kept: scores and extras, never losses or training logs
    assert set(rebuilt.records["kind"]) == {"eval", "extra"}
    assert set(rebuilt.records.loc[rebuilt.records["kind"] == "eval", "metric"]) == {"mse"}


def test_exporting_a_chunk_again_keeps_the_runs_exported_before(tmp_path):
    tiny_runs(tmp_path / "first", trials=(0,))
    tidy.export(load_runs(tmp_path / "first"), tmp_path / "out", "last")
    tiny_runs(tmp_path / "second", trials=(1,))
    written = tidy.export(load_runs(tmp_path / "second"), tmp_path / "out", "last")
    assert sorted(p.name for p in written) == ["linear_sem__erm.csv.gz", "linear_sem__irm.csv.gz"]
    rebuilt = tidy.load(tmp_path / "out")
    assert sorted(set(rebuilt.runs["trial"])) == [0, 1] and len(rebuilt.runs) == 4
    # exporting the same runs again replaces their rows, never duplicates them
    tidy.export(load_runs(tmp_path / "second"), tmp_path / "out", "last")
    assert len(tidy.load(tmp_path / "out").records) == len(rebuilt.records)
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_loading_without_tidy_files_says_what_to_run():
    from invbench.errors import ConfigError

    with pytest.raises(ConfigError, match="no tidy results in .*: run the reproduction"):
        tidy.load(Path("/nonexistent"))


def write_published(path, rows):
    header = "paper,table,protocol,dataset,dataset_options,row,column,unit,published,spread,spread_kind,n,note\n"
    body = "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    path.write_text(header + body)


def test_published_vs_ours_gives_the_difference_in_units_of_the_reported_spread(tmp_path):
    tiny_runs(tmp_path / "runs", methods=("erm",), trials=(0, 1, 2))
    results = load_runs(tmp_path / "runs")
    board = build_leaderboard(results, get_strategy("last"))
    cells = board.per_trial[(board.per_trial["method"] == "erm") & (board.per_trial["column"] == "sigma=5")]
    ours = [float(v) for v in cells["value"]]
    mean = sum(ours) / 3
    se = (sum((v - mean) ** 2 for v in ours) / 2 / 3) ** 0.5
    write_published(tmp_path / "p.csv", [
        ["paper", "t", "p", "linear_sem", '"{""hidden"": false}"', "erm", "sigma=5", "mse", mean + 0.5, 0.25, "std", 10, ""],
        ["paper", "t", "p", "linear_sem", '"{""hidden"": true}"', "erm", "sigma=5", "mse", 1.0, 0.1, "std", 10, ""],
        ["paper", "t", "p", "linear_sem", "{}", "irm", "sigma=5", "mse", 1.0, "", "", "", ""],
    ])
    items = published.read_published(tmp_path / "p.csv")
    found = published.compare(items, board, results, {})
    assert found[0].ours == pytest.approx(mean) and found[0].ours_se == pytest.approx(se) and found[0].n == 3
    assert found[0].in_spreads == pytest.approx(2.0)  # 0.5 away, spread 0.25
    assert found[1].ours is None and found[1].why_missing == "no runs of this dataset"  # hidden=True never ran
    assert found[2].ours is None and found[2].why_missing == "no value in our leaderboard"
    published.write_csv(found, tmp_path / "side.csv")
    lines = (tmp_path / "side.csv").read_text().splitlines()
    assert lines[0] == "table,row,column,published,published_spread,ours,ours_se,n"
    assert lines[1].startswith("t,erm,sigma=5 [linear_sem hidden=False],")


def test_reproduce_lists_and_refuses_what_it_does_not_have(cli):
    listed = cli("reproduce", "--list")
    assert listed.returncode == 0
    for name in ("unit_tests", "irm_sem", "cfmnist_irm", "cfmnist_domainbed"):
        assert f"\n{name}: " in "\n" + listed.stdout
    unknown = cli("reproduce", "unit_test")
    assert unknown.returncode == 2 and "unknown reproduction 'unit_test'; allowed: unit_tests" in unknown.stderr
    chunk = cli("reproduce", "irm_sem", "--methods", "erm,nosuch", "--report-only")
    assert chunk.returncode == 2 and "--methods: ['nosuch'] not in this reproduction" in chunk.stderr


def test_report_only_without_tidy_files_is_a_clear_error(cli, tmp_path):
    out = cli("reproduce", "irm_sem", "--report-only", "--results", str(tmp_path))
    assert out.returncode == 2 and "no tidy results in" in out.stderr
    assert not (tmp_path / "irm_sem" / "README.md").exists()


def test_the_same_runs_write_the_same_tidy_bytes(tmp_path):
    # committed files: exporting again must not change them (no timestamp in the gzip header)
    tiny_runs(tmp_path / "runs", methods=("erm",), trials=(0,))
    results = load_runs(tmp_path / "runs")
    (path,) = tidy.export(results, tmp_path / "a", "last")
    first = path.read_bytes()
    tidy.export(results, tmp_path / "a", "last")
    assert path.read_bytes() == first
    assert gzip.decompress(first).decode().startswith("run,run_id,dataset,")


def test_accuracy_is_converted_into_the_published_unit():
    assert published.in_unit([0.25, 0.5], "acc", "accuracy %") == [25.0, 50.0]
    assert published.in_unit([0.25, 0.5], "acc", "error") == [0.75, 0.5]
    assert published.in_unit([3.0], "mse", "mse") == [3.0]
    with pytest.raises(ValueError, match="cannot compare our mse with a published accuracy %"):
        published.in_unit([3.0], "mse", "accuracy %")


def test_the_train_envs_column_is_compared_in_the_tables_own_score(tmp_path):
    tiny_runs(tmp_path / "runs", methods=("erm",), trials=(0, 1))
    results = load_runs(tmp_path / "runs")
    board = build_leaderboard(results, get_strategy("last"))
    write_published(tmp_path / "p.csv", [["paper", "t", "p", "linear_sem", "{}", "erm", "train envs", "mse", 1.0, 0.5,
                                          "std", 10, ""]])
    (found,) = published.compare(published.read_published(tmp_path / "p.csv"), board, results, {})
    cell = board.per_trial[(board.per_trial["method"] == "erm") & board.per_trial["column"].str.startswith("train envs")]
    assert found.ours == pytest.approx(sum(cell["value"]) / len(cell)) and found.n == 2


def test_a_chunk_trains_exports_and_export_only_adds_finished_runs_without_launching(cli, tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    made = cli("reproduce", "irm_sem", "--small", "--methods", "erm", "--runs", runs, "--results", results,
               "--workers", "1")
    assert made.returncode == 0, made.stderr[-2000:]
    folder = results / "irm_sem"
    assert len(tidy.load(folder).runs) == 2  # erm on the small version's one setup, 2 trials
    for name in ("README.md", "leaderboard-test_env_last.md", "leaderboard-last.tex", "published_vs_ours.csv"):
        assert (folder / name).is_file(), name
    readme = (folder / "README.md").read_text()
    assert "2 of " in readme and "invbench reproduce irm_sem --small" in readme and "## Deviations" in readme
    # the tidy files lost (a fresh checkout of an older commit): the run folder still has them
    for path in (folder / "tidy").iterdir():
        path.unlink()
    again = cli("reproduce", "irm_sem", "--small", "--methods", "erm", "--runs", runs, "--results", results,
                "--export-only")
    assert again.returncode == 0 and "launch" not in again.stderr
    assert len(tidy.load(folder).runs) == 2
    chunks = [json.loads(line) for line in (folder / "chunks.jsonl").read_text().splitlines()]
    assert [c["runs_exported"] for c in chunks] == [2, 2] and chunks[1]["chunk"].endswith("export only")
    assert [c["runs_new"] for c in chunks] == [2, 2]  # the tidy files had been removed
    third = cli("reproduce", "irm_sem", "--small", "--methods", "erm", "--runs", runs, "--results", results,
                "--export-only")
    assert third.returncode == 0
    assert json.loads((folder / "chunks.jsonl").read_text().splitlines()[-1])["runs_new"] == 0
    assert 0 < chunks[1]["wall_seconds"] <= chunks[0]["wall_seconds"]


def test_a_published_average_or_worst_is_compared_with_each_trials_average_or_worst_environment(tmp_path):
    # runs trained on every environment: a table with a column per environment, then avg and worst
    for trial in (0, 1, 2):
        run(make_spec("linear_sem", "erm", dataset_options={"n_per_env": 100}, test_envs=(), trial=trial, steps=20,
                      eval_every=20, device="cpu"), tmp_path / "runs")
    results = load_runs(tmp_path / "runs")
    board = build_leaderboard(results, get_strategy("last"))
    envs = ("sigma=0.2", "sigma=2", "sigma=5")
    rows = board.per_trial[board.per_trial["column"].isin(envs)]
    per_trial = {t: [float(rows[(rows["trial"] == t) & (rows["column"] == e)]["value"].iloc[0]) for e in envs]
                 for t in (0, 1, 2)}
    write_published(tmp_path / "p.csv", [
        ["paper", "t", "p", "linear_sem", "{}", "erm", "avg", "mse", 1.0, 0.5, "std", 10, ""],
        ["paper", "t", "p", "linear_sem", "{}", "erm", "worst", "mse", 1.0, 0.5, "std", 10, ""],
    ])
    average, worst = published.compare(published.read_published(tmp_path / "p.csv"), board, results, {})
    assert average.n == worst.n == 3
    assert average.ours == pytest.approx(sum(sum(v) / 3 for v in per_trial.values()) / 3)
    assert worst.ours == pytest.approx(sum(max(v) for v in per_trial.values()) / 3)  # MSE: the largest
