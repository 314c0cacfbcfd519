"""Renderers: escaping, balanced LaTeX, lossless CSV, nothing truncated."""

import csv
import re
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


# LaTeX for papers --------------------------------------------------------------------------

PAPER_NAMES = {"erm": "ERM", "irm": "IRMv1", "vrex": "V-REx", "mmrex": "MM-REx", "groupdro": "Group DRO",
               "andmask": "AND-mask", "iga": "IGA", "fishr": "Fishr", "ibirm": "IB-IRM", "iberm": "IB-ERM",
               "coral": "CORAL", "mmd": "MMD", "sd": "SD", "oracle": "Oracle"}


def paper_board():
    """Accuracy columns (higher is better), the training envs' score (no best), and an extra
    error (lower is better); the oracle is best everywhere but is no competitor."""
    def acc(mean):
        return Cell(mean, 0.01, 3, "", "acc")

    def row(e1, e2, train, causal):
        cells = {"e1": acc(e1), "e2": acc(e2), "avg": acc((e1 + e2) / 2), "worst": acc(min(e1, e2)),
                 "train envs": acc(train), "causal_error": Cell(causal, causal / 10, 3, "", "causal_error")}
        return (3, cells)

    columns = ["e1", "e2", "avg", "worst", "train envs", "causal_error"]
    rows = {"erm": row(0.70, 0.30, 0.95, 0.5), "irm": row(0.65, 0.60, 0.80, 0.02),
            "vrex": row(0.72, 0.50, 0.85, 0.2), "oracle": row(0.75, 0.74, 0.75, 0.001),
            "my_method": row(0.50, 0.50, 0.50, 0.9)}
    accuracy = Table("toy_set", "src", "acc", columns, rows)
    mse_rows = {"erm": (3, {"s=5": Cell(281.2, 27.0, 3, "", "mse")}),
                "groupdro": (3, {"s=5": Cell(16.32, 0.51, 2, "", "mse")}),
                "vrex": (3, {"s=5": Cell(1.0, 0.012, 3, "", "mse")})}
    mse = Table("toy_set", "src", "mse", ["s=5"], mse_rows)  # same dataset and source: labels must differ
    return Leaderboard("oracle", "test-domain oracle", [accuracy, mse], None, "15 finished run(s)")


def _latex_rows(tex, table_index):
    body = tex.split(r"\begin{tabular}")[table_index + 1].split(r"\bottomrule")[0]
    lines = [line.rstrip(" \\") for line in body.splitlines() if " & " in line]
    return {line.split(" & ")[0]: line.split(" & ")[1:] for line in lines[1:]}, lines[0].split(" & ")


def test_latex_has_display_names_labels_captions_and_booktabs():
    tex = to_latex(paper_board())
    rows, header = _latex_rows(tex, 0)
    assert list(rows) == ["ERM", "IRMv1", "V-REx", r"my\_method", "Oracle"]  # the oracle last, as a reference
    assert header[:2] == ["Method", "Trials"] and "causal coefficient error" in header
    assert tex.count(r"\label{") == 2 and len(set(re.findall(r"\\label\{([^}]*)\}", tex))) == 2
    assert re.search(r"\\label\{tab:toy-set-src-oracle\}", tex)
    captions = re.findall(r"\\caption\{(.*)\}", tex)
    assert len(captions) == 2 and all(r"Mean $\pm$ standard error over trials" in c for c in captions)
    assert "test-domain oracle" in captions[0] and "accuracy: higher is better" in captions[0]
    assert "causal coefficient error: lower is better" in captions[0] and "other than Oracle" in captions[0]
    assert tex.count(r"\toprule") == tex.count(r"\midrule") - 1 == tex.count(r"\bottomrule") == 2
    every = Table("all", "src", "acc", ["e"], {m: (1, {"e": Cell(0.5, None, 1, "", "acc")}) for m in PAPER_NAMES})
    every_tex = to_latex(Leaderboard("last", "last checkpoint", [every], None, "14 run(s)"))
    assert list(_latex_rows(every_tex, 0)[0]) == [PAPER_NAMES[m] for m in (
        "erm", "irm", "vrex", "mmrex", "groupdro", "andmask", "iga", "fishr", "ibirm", "iberm", "coral", "mmd", "sd",
        "oracle")]


def test_latex_bolds_the_best_cell_of_each_column_in_its_metrics_direction():
    rows, header = _latex_rows(to_latex(paper_board()), 0)
    columns = header[2:]
    bold = {column: [m for m, cells in rows.items() if cells[1 + i].startswith(r"\textbf{")]
            for i, column in enumerate(columns)}
    assert bold == {"e1": ["V-REx"],  # 72.0: the oracle's 75.0 is a reference, not a competitor
                    "e2": ["IRMv1"], "average": ["IRMv1"], "worst": ["IRMv1"],
                    "train envs": [],  # the best fit to the training data is no merit
                    "causal coefficient error": ["IRMv1"]}  # lower is better
    assert rows["V-REx"][1] == r"\textbf{72.0 $\pm$ 1.0}"
    mse_rows, _ = _latex_rows(to_latex(paper_board()), 1)
    assert [m for m, cells in mse_rows.items() if cells[1].startswith(r"\textbf")] == ["V-REx"]  # lowest MSE


def test_latex_has_one_precision_per_column_and_the_standard_error():
    tex = to_latex(paper_board())
    mse_rows, _ = _latex_rows(tex, 1)
    # the smallest mean (1.0) gets 3 significant digits; every cell of the column as many decimals
    assert mse_rows["ERM"][1] == r"281.20 $\pm$ 27.00"
    assert mse_rows["Group DRO"][1] == r"16.32 $\pm$ 0.51 (n=2)"
    assert mse_rows["V-REx"][1] == r"\textbf{1.00 $\pm$ 0.01}"
    rows, header = _latex_rows(tex, 0)
    for i, column in enumerate(header[2:]):
        decimals = {len(number.split(".")[1]) for cells in rows.values()
                    for number in re.findall(r"\d+\.\d+", cells[1 + i])}
        assert len(decimals) == 1, (column, decimals)
    assert rows["ERM"][-1] == r"0.50000 $\pm$ 0.05000"  # causal error: the smallest mean, 0.001, has 3 digits


def test_html_table_has_display_names_bold_best_and_the_error_bars_meaning():
    page = render(paper_board(), "html")
    assert "<th scope=\"row\">V-REx</th>" in page and "<strong>72.0 ± 1.0</strong>" in page
    assert page.count("standard error over trials") >= 2  # each table's note
