"""Renderers: escaping, balanced LaTeX, lossless CSV, nothing truncated."""

import csv
import io

from invbench.results.aggregate import Cell, Leaderboard, Table
from invbench.results.render import format_value, latex_escape, render, to_csv, to_latex, to_markdown

LONG = "needs runs that were not launched (test envs {a, c}) " + "x" * 300


def board():
    cells = {"a|b": Cell(0.7251, 0.0123, 3, "", "acc"), "c_1%": Cell(note=LONG, metric="acc"),
             "err": Cell(0.123456, None, 1, "1 trial(s) without a value: no val split", "causal_error")}
    table = Table("toy_set", "src (n=10)", "acc", ["a|b", "c_1%", "err"], {"my_method": (3, cells)})
    return Leaderboard("oracle", "test-domain oracle", [table], None, "3 finished run(s)")


def test_format_value_percent_and_significant_digits():
    assert format_value(Cell(0.7251, 0.0123, 3, metric="acc")) == "72.5 ± 1.2"
    assert format_value(Cell(0.5, None, 1, metric="acc")) == "50.0"
    assert format_value(Cell(10.4321, 0.51234, 3, metric="mse")) == "10.43 ± 0.51"


def test_markdown_escapes_pipes_and_keeps_long_reasons_whole():
    md = to_markdown(board())
    assert "a\\|b" in md and LONG in md
    # an empty cell points to a numbered note that keeps its reason whole
    assert "| my_method | 3 | 72.5 ± 1.2 | n/a [1] |" in md
    assert "[1] n/a: " in md
    assert "0.1235 (n=1) [2]" in md and "[2] my_method, err: 1 trial(s) without a value: no val split" in md


def test_latex_booktabs_and_escaping():
    tex = to_latex(board())
    assert latex_escape("a_b 5% {x} $ & #") == r"a\_b 5\% \{x\} \$ \& \#"
    assert r"72.5 $\pm$ 1.2" in tex and r"toy\_set" in tex and r"c\_1\%" in tex and r"a\textbar{}b" in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert LONG.replace("{", r"\{").replace("}", r"\}") in tex


def test_csv_is_long_and_lossless():
    rows = list(csv.DictReader(io.StringIO(to_csv(board()))))
    assert [r["column"] for r in rows] == ["a|b", "c_1%", "err"]
    assert float(rows[0]["mean"]) == 0.7251 and float(rows[0]["se"]) == 0.0123 and rows[0]["n"] == "3"
    assert rows[1]["mean"] == "" and rows[1]["note"] == LONG


def test_html_escapes_and_marks_missing_cells():
    page = render(board(), "html")
    assert "<td class=\"missing\">n/a [1]</td>" in page and "n/a: " in page and "&lt;" not in LONG and "my_method" in page
