"""`invbench collect DIR`: the leaderboard on stdout, plots, HTML report, warnings on stderr."""

import json
import shutil
from pathlib import Path

import pytest


FIXTURES = Path(__file__).parent / "fixtures"
SWEEP, EXPECTED = FIXTURES / "golden_sweep", FIXTURES / "golden_expected"


def test_default_is_the_markdown_leaderboard_with_training_domain_validation(invbench):
    code, out, _ = invbench("collect", SWEEP)
    assert code == 0 and out == (EXPECTED / "training_domain.md").read_text()


@pytest.mark.parametrize("fmt, suffix", [("latex", "tex"), ("csv", "csv")])
def test_formats(invbench, fmt, suffix):
    code, out, _ = invbench("collect", SWEEP, "--selection", "oracle", "--format", fmt)
    assert code == 0 and out == (EXPECTED / f"oracle.{suffix}").read_text()


def test_plots_and_html_report(invbench, tmp_path):
    code, out, err = invbench("collect", SWEEP, "--selection", "last", "--plots", tmp_path / "plots",
                              "--html", tmp_path / "report.html")
    assert code == 0 and "wrote" in err
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == [f"linear_sem-synthetic_n_600_-last-{k}.{fmt}" for k in ("curves", "envs", "heatmap")
                     for fmt in ("pdf", "png", "svg")]
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 3


def test_corrupt_and_partial_run_directories(invbench, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(SWEEP, root)
    victim = sorted(root.glob("golden_toy-erm-test2-trial0-*"))[0]
    raw = (victim / "metrics.jsonl").read_text()
    (victim / "metrics.jsonl").write_text(raw[: len(raw) - 30])  # truncate the last record
    killed, kept = sorted(root.glob("linear_sem-irm-*"))
    (killed / "done.json").unlink()  # killed before the end
    code, out, err = invbench("collect", root, "--selection", "last")
    assert code == 0
    assert f"{victim / 'metrics.jsonl'}:3: not valid JSON (truncated?); line skipped" in err
    assert "151 finished run(s); 2 unfinished left out (2 started); 1 corrupt line(s) skipped" in out
    last = json.loads((kept / "metrics.jsonl").read_text().splitlines()[-1])["envs"]["sigma=5"]["train"]["mse"]
    assert f"| irm | 1 | {last:.4g} [1] |" in out  # the one trial left, no SE, and a note:
    assert "[1] irm, sigma=5: 1 unfinished run(s) left out" in out
    code, out, _ = invbench("collect", root, "--selection", "last", "--include-unfinished")
    assert "| irm | 2 |" in out


def test_a_missing_folder_is_a_usage_error(invbench, tmp_path):
    code, _, err = invbench("collect", tmp_path / "nowhere")
    assert code == 2 and "is not a folder of run directories" in err


@pytest.fixture
def runs_without_val(tmp_path):
    """The golden sweep's linear_sem runs: holdout 0 (the shipped datasets' default), no val split."""
    root = tmp_path / "runs"
    for run in SWEEP.glob("linear_sem-*"):
        shutil.copytree(run, root / run.name)
    return root


def _sigma5_cells(out):
    return {line.split("|")[1].strip(): line.split("|")[3].strip() for line in out.splitlines()
            if line.startswith("| ") and "trials" not in line}


def test_default_selection_fits_runs_without_a_val_split_and_says_which(invbench, runs_without_val):
    code, out, err = invbench("collect", runs_without_val)
    assert code == 0
    assert "invbench: selection last: the runs have no val split" in err and len(err.splitlines()) == 1
    assert out.startswith("Selection: last checkpoint (last).")
    cells = _sigma5_cells(out)
    assert set(cells) == {"erm", "groupdro", "irm", "vrex"} and not any("n/a" in c for c in cells.values())
    # the numbers are the final records': erm's mean over its two trials
    finals = [json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["envs"]["sigma=5"]["train"]["mse"]
              for run in sorted(runs_without_val.glob("linear_sem-erm-*"))]
    assert cells["erm"].startswith(f"{sum(finals) / 2:.4g} ± ")


def test_default_selection_is_training_domain_validation_when_runs_hold_out_val(invbench):
    code, _, err = invbench("collect", SWEEP)
    assert code == 0 and "invbench: selection training_domain: the runs hold out a val split" in err


def test_a_selection_that_cannot_work_says_which_to_use_instead_of_a_table_of_na(invbench, runs_without_val):
    code, out, err = invbench("collect", runs_without_val, "--selection", "training_domain")
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("invbench: error: selection training_domain gives no value for any cell (no val split")
    assert line.endswith("use --selection last")


def test_save_baseline_refuses_to_overwrite_an_existing_file_without_force(invbench, runs_without_val, tmp_path):
    stored = tmp_path / "baseline.csv"
    stored.write_text("committed baseline\n")
    code, out, err = invbench("collect", runs_without_val, "--save-baseline", stored)
    assert code == 2 and out == "" and stored.read_text() == "committed baseline\n"
    assert err == f"invbench: error: {stored} exists; save the baseline to another path, or pass --force to overwrite it\n"
    code, _, _ = invbench("collect", runs_without_val, "--save-baseline", stored, "--force")
    assert code == 0 and stored.read_text().startswith("dataset,source,selection,")


def test_readme_baseline_flow_never_overwrites_the_committed_baseline_nor_compares_runs_with_themselves():
    import re
    import shlex

    root = Path(__file__).resolve().parents[1]
    lines = [shlex.split(line.split("#")[0].replace("$ ", "", 1)) for line in (root / "README.md").read_text().splitlines()
             if re.match(r"\s*(\$ )?(\S*/)?invbench (collect|compare) ", line)]
    saved: dict[str, str] = {}  # baseline file -> the runs it was saved from
    compares = 0
    for words in lines:
        if words[1] == "collect" and "--save-baseline" in words:
            target = words[words.index("--save-baseline") + 1]
            assert not target.startswith("results/"), f"the README's --save-baseline {target} writes into the committed data"
            saved[target] = words[2]
        elif words[1] == "compare":
            compares += 1
            baseline, current = words[2], words[3]
            assert baseline in saved or (root / baseline).is_file(), f"the README compares with {baseline}, which nothing made"
            assert saved.get(baseline) != current, f"the README compares {current} with a baseline saved from itself"
    assert saved and compares


def test_diverged_and_failed_runs_say_so_in_their_cells(invbench, runs_without_val):
    for run in runs_without_val.glob("linear_sem-irm-*"):  # both trials diverged
        (run / "done.json").unlink()
        (run / "error.json").write_text(json.dumps({"type": "FloatingPointError",
                                                    "message": "the loss became nan at step 12"}))
    vrex = sorted(runs_without_val.glob("linear_sem-vrex-*"))
    (vrex[0] / "done.json").unlink()  # one trial failed otherwise: the other still counts
    (vrex[0] / "error.json").write_text(json.dumps({"type": "RuntimeError", "message": "boom"}))
    code, out, _ = invbench("collect", runs_without_val, "--selection", "last")
    assert code == 0
    cells = _sigma5_cells(out)
    assert cells["irm"] == "n/a [1]" and "[1] n/a: diverged (2 run(s): the loss became non-finite)" in out
    assert "| irm | 0 | n/a [1] | n/a [1] | n/a [1] | n/a [1] |" in out  # its extra metrics too
    assert cells["vrex"].endswith("[2]") and "[2] vrex, sigma=5: 1 failed run(s) left out" in out
    assert "unfinished" not in out.split("Runs:")[1].split("\n", 1)[1]  # only the summary line may say so


@pytest.mark.parametrize("flag, name, what", [("--html", "r.html", "the report"), ("--plots", "p", "the plots"),
                                              ("--save-baseline", "x.csv", "the baseline")])
def test_an_unwritable_output_is_one_line_exit_2_before_the_table(invbench, flag, name, what):
    # /proc refuses new files to root as well: the check tries, it does not read permission bits
    code, out, err = invbench("collect", SWEEP, "--selection", "last", flag, f"/proc/{name}")
    assert code == 2 and out == ""  # no table printed before the error
    assert err.startswith(f"invbench: error: cannot write {what} to /proc/{name} ({flag}): ")
    assert err.count("\n") == 1 and err.endswith(f"; choose another {flag}\n")
