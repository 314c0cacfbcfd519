"""`invbench collect DIR`: the leaderboard on stdout, plots, HTML report, warnings on stderr."""

import json
import shutil
from pathlib import Path

import pytest

from invbench.cli import main as cli_main

FIXTURES = Path(__file__).parent / "fixtures"
SWEEP, EXPECTED = FIXTURES / "golden_sweep", FIXTURES / "golden_expected"


@pytest.fixture
def invbench(capsys):
    def call(*args):
        code = cli_main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return call


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
    assert names == [f"linear_sem-synthetic_n_600_-last-{k}.png" for k in ("curves", "envs", "heatmap")]
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
