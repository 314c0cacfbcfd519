"""Leaderboards as Markdown, LaTeX (booktabs), CSV and HTML. Nothing is truncated.

Cell text: "mean ± SE" in the metric's display units and digits (invbench.metrics: accuracy
in percent with one decimal, MSE and the extra metrics with 4 significant digits); the SE
is left out for a single trial. A cell whose number of
trials differs from its row's says "(n=k)". A cell with a caveat, and an empty cell ("n/a"),
get a numbered note under the table that says why; a reason shared by cells is one note.
"""

from __future__ import annotations

import csv
import html
import io
import re

from invbench.metrics import metric
from invbench.results.aggregate import Cell, Leaderboard, Table

FORMATS = ("md", "latex", "csv", "html")


def format_value(cell: Cell, plus_minus: str = "±") -> str:
    meaning = metric(cell.metric)
    text = meaning.format(cell.mean)
    if cell.se is not None:
        text += f" {plus_minus} {format(meaning.display(cell.se), meaning.se_digits)}"
    return text


def _cells(table: Table, plus_minus: str = "±") -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows of plain text, and numbered notes, shared by every renderer.

    Why a cell is empty, and a caveat on a number, go into numbered notes under the table;
    one reason shared by many cells is one note, so a table of "n/a" stays readable.
    """
    header = ["method", "trials", *table.columns]
    rows, notes = [], []

    def note_number(text: str) -> int:
        if text not in notes:
            notes.append(text)
        return notes.index(text) + 1

    for method, (trials, cells) in sorted(table.rows.items()):
        row = [method, str(trials)]
        for column in table.columns:
            cell = cells.get(column) or _absent(cells, table.metric)
            if cell.mean is None:
                row.append(f"n/a [{note_number(f'n/a: {cell.note}')}]")
                continue
            text = format_value(cell, plus_minus)
            if cell.n != trials:
                text += f" (n={cell.n})"
            if cell.note:
                text += f" [{note_number(f'{method}, {column}: {cell.note}')}]"
            row.append(text)
        rows.append(row)
    return header, rows, notes


def _absent(cells: dict[str, Cell], metric: str) -> Cell:
    """A column a row has no cell in (an extra metric of runs that gave no value): it is
    empty for the reason the row's empty cells give (diverged, no val split ...)."""
    why = next((c.note for c in cells.values() if c.mean is None and c.note), "no runs")
    return Cell(note=why, metric=metric)


def _preamble(board: Leaderboard) -> list[str]:
    return [f"Selection: {board.selection_title} ({board.selection}).", f"Runs: {board.summary}."]


# Markdown ---------------------------------------------------------------------------------

def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def to_markdown(board: Leaderboard) -> str:
    out = _preamble(board)
    for table in board.tables:
        header, rows, notes = _cells(table)
        out += ["", f"### {_md_escape(table.title)}", ""]
        out.append("| " + " | ".join(map(_md_escape, header)) + " |")
        out.append("|" + "|".join([":---", "---:"] + ["---:"] * (len(header) - 2)) + "|")
        out += ["| " + " | ".join(map(_md_escape, row)) + " |" for row in rows]
        if notes:
            out.append("")
            out += [f"[{i}] {_md_escape(note)}  " for i, note in enumerate(notes, start=1)]
    return "\n".join(out) + "\n"


# LaTeX ------------------------------------------------------------------------------------

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    text = _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], text)
    return text.replace("±", r"$\pm$")


def to_latex(board: Leaderboard) -> str:
    """One booktabs table environment per leaderboard (needs \\usepackage{booktabs})."""
    out = ["% " + latex_escape(line) for line in _preamble(board)]
    for table in board.tables:
        header, rows, notes = _cells(table)
        out += ["", r"\begin{table}[t]", r"\centering",
                r"\caption{" + latex_escape(f"{table.title}; selection: {board.selection_title}") + "}",
                r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
                " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
        out += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
        out += [r"\bottomrule", r"\end{tabular}"]
        if notes:
            out.append(r"\par\smallskip\footnotesize")
            out += [latex_escape(f"[{i}] {note}") + r"\\" for i, note in enumerate(notes, start=1)]
        out.append(r"\end{table}")
    return "\n".join(out) + "\n"


# CSV --------------------------------------------------------------------------------------

CSV_COLUMNS = ["dataset", "source", "selection", "method", "trials", "column", "metric", "mean", "se", "n", "note",
               "test_envs"]


def to_csv(board: Leaderboard) -> str:
    """Long format, one line per cell, raw values (accuracy as a fraction, full precision);
    test_envs: the test set the cell's runs held out ("none": every environment trained)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for table in board.tables:
        for method, (trials, cells) in sorted(table.rows.items()):
            for column in table.columns:
                cell = cells.get(column) or _absent(cells, table.metric)
                writer.writerow([table.dataset, table.source, board.selection, method, trials, column, cell.metric,
                                 "" if cell.mean is None else repr(cell.mean),
                                 "" if cell.se is None else repr(cell.se), cell.n, cell.note,
                                 table.column_test_envs_of(column)])
    return buffer.getvalue()


# HTML -------------------------------------------------------------------------------------

def table_html(board: Leaderboard, table: Table) -> str:
    header, rows, notes = _cells(table)
    esc = html.escape
    out = ['<table class="leaderboard">', f"<caption>{esc(table.title)}</caption>",
           "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for row in rows:
        tds = [f"<th scope=\"row\">{esc(row[0])}</th>"]
        tds += [f'<td class="{"missing" if c.startswith("n/a") else "value"}">{esc(c)}</td>' for c in row[1:]]
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    if notes:
        out.append('<ol class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ol>")
    return "\n".join(out)


def to_html(board: Leaderboard) -> str:
    """The tables as an HTML fragment (report.py wraps them in a page with the plots)."""
    parts = [f"<p>{html.escape(line)}</p>" for line in _preamble(board)]
    parts += [table_html(board, table) for table in board.tables]
    return "\n".join(parts) + "\n"


def render(board: Leaderboard, fmt: str) -> str:
    from invbench.errors import ConfigError

    renderers = {"md": to_markdown, "latex": to_latex, "csv": to_csv, "html": to_html}
    if fmt not in renderers:
        raise ConfigError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return renderers[fmt](board)
