"""Leaderboards as Markdown, LaTeX (booktabs), CSV and HTML. Nothing is truncated.

Cell text: "mean ± SE", the standard error over trials, in the metric's display units; the
SE is left out for a single trial. A cell whose number of trials differs from its row's
says "(n=k)". A cell with a caveat, and an empty cell ("n/a"), get a numbered note under
the table that says why; a reason shared by cells is one note.

Markdown and CSV are for people at a terminal and for scripts: methods by their registered
names, each cell in its metric's own digits (invbench.metrics: accuracy in percent with one
decimal, MSE and the extra metrics with 4 significant digits). LaTeX and HTML are for
papers and reports: the methods' display names (invbench.results.display) in a fixed order,
one number of decimals per column, the best cell of each column in bold, a caption that
says what the numbers are, and (LaTeX) a label; HTML splits a table too wide for the page.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from dataclasses import dataclass

from invbench.metrics import METRICS, metric
from invbench.results.aggregate import AVG, WORST, Cell, Leaderboard, Table
from invbench.results.display import REFERENCE_METHODS, display_name, ordered
from invbench.results.selection import TRAIN_ENVS

FORMATS = ("md", "latex", "csv", "html")
SE_NOTE = "Cells: mean ± standard error over trials (n=k: a cell over fewer trials than its row)."
COLUMN_SIGNIFICANT = 3  # a column of errors shows its smallest mean to 3 significant digits
MAX_DECIMALS = 6


def format_value(cell: Cell, plus_minus: str = "±", decimals: int | None = None) -> str:
    """``decimals``: one number of decimals for mean and SE (a column's), else the metric's digits."""
    meaning = metric(cell.metric)
    if decimals is not None:
        text = f"{meaning.display(cell.mean):.{decimals}f}"
        if cell.se is not None:
            text += f" {plus_minus} {meaning.display(cell.se):.{decimals}f}"
        return text
    text = meaning.format(cell.mean)
    if cell.se is not None:
        text += f" {plus_minus} {format(meaning.display(cell.se), meaning.se_digits)}"
    return text


def _column_cells(table: Table, column: str) -> list[tuple[str, Cell]]:
    return [(method, cells[column]) for method, (_, cells) in table.rows.items()
            if column in cells and cells[column].mean is not None]


def shared_decimals(metric_name: str, display_values) -> int:
    """One number of decimals for numbers shown side by side (display units).

    A metric shown with fixed decimals (accuracy: 1) keeps them; an error metric shown by
    significant digits gets enough decimals for the smallest value to keep
    COLUMN_SIGNIFICANT of them, so the numbers line up and stay comparable.
    """
    fixed = re.fullmatch(r"\.(\d+)f", metric(metric_name).digits)
    if fixed:
        return int(fixed.group(1))
    smallest = min((abs(v) for v in display_values if v and math.isfinite(v)), default=0.0)
    if not smallest:
        return 0
    decimals = COLUMN_SIGNIFICANT - 1 - math.floor(math.log10(smallest))
    return max(0, min(MAX_DECIMALS, decimals))


def column_decimals(table: Table, column: str) -> int | None:
    """One number of decimals for every cell of a column (None: it has no value)."""
    values = _column_cells(table, column)
    if not values:
        return None
    name = values[0][1].metric
    return shared_decimals(name, [metric(name).display(c.mean) for _, c in values])


def best_methods(table: Table, column: str) -> set[str]:
    """The methods whose cell is best in ``column``, judged by its metric's direction as shown
    (equal after rounding to the column's decimals: all of them). None when the metric has
    no direction, the column is the training environments' score (the best fit to the
    training data is no merit), fewer than two methods compete, or all of them tie.
    Reference methods (the oracle) are not competitors."""
    if column.startswith(TRAIN_ENVS):
        return set()
    values = [(m, c) for m, c in _column_cells(table, column) if m not in REFERENCE_METHODS]
    if len(values) < 2:
        return set()
    meaning = metric(values[0][1].metric)
    if meaning.higher_is_better is None:
        return set()
    decimals = column_decimals(table, column)
    shown = {m: round(meaning.display(c.mean), decimals) for m, c in values}
    best = (max if meaning.higher_is_better else min)(shown.values())
    winners = {m for m, v in shown.items() if v == best}
    return set() if len(winners) == len(values) else winners


def column_heading(column: str) -> str:
    """A column's heading for people: an extra metric by its title ("causal coefficient
    error (sigma=5)" for "causal_error (sigma=5)"), environments as they are named."""
    if column in (AVG, WORST):
        return {AVG: "average", WORST: "worst"}[column]
    name, paren, rest = column.partition(" (")
    if name in METRICS:
        return METRICS[name].title + (f" ({rest}" if paren else "")
    return column


@dataclass
class _Row:
    method: str
    trials: int
    values: list[str]  # per value column: the cell's text with its note marks
    best: list[bool]  # per value column


def _cells(table: Table, plus_minus: str = "±", paper: bool = False) -> tuple[list[str], list[_Row], list[str]]:
    """Header, rows and numbered notes, shared by every renderer.

    ``paper``: methods in display order (invbench.results.display), one number of decimals
    per column, and the best cells marked; otherwise by registered name in the metrics' digits.
    Why a cell is empty, and a caveat on a number, go into numbered notes under the table;
    one reason shared by many cells is one note, so a table of "n/a" stays readable.
    """
    header = ["method", "trials", *table.columns]
    rows, notes = [], []

    def note_number(text: str) -> int:
        if text not in notes:
            notes.append(text)
        return notes.index(text) + 1

    decimals = {c: column_decimals(table, c) for c in table.columns} if paper else {}
    best = {c: best_methods(table, c) for c in table.columns} if paper else {}
    methods = ordered(table.rows) if paper else sorted(table.rows)
    for method in methods:
        trials, cells = table.rows[method]
        texts, marks = [], []
        for column in table.columns:
            cell = cells.get(column) or _absent(cells, table.metric)
            marks.append(method in best.get(column, ()))
            if cell.mean is None:
                texts.append(f"n/a [{note_number(f'n/a: {cell.note}')}]")
                continue
            text = format_value(cell, plus_minus, decimals.get(column))
            if cell.n != trials:
                text += f" (n={cell.n})"
            if cell.note:
                where = f"{display_name(method)}, {column_heading(column)}" if paper else f"{method}, {column}"
                text += f" [{note_number(f'{where}: {cell.note}')}]"
            texts.append(text)
        rows.append(_Row(method, trials, texts, marks))
    return header, rows, notes


def _absent(cells: dict[str, Cell], metric: str) -> Cell:
    """A column a row has no cell in (an extra metric of runs that gave no value): it is
    empty for the reason the row's empty cells give (diverged, no val split ...)."""
    why = next((c.note for c in cells.values() if c.mean is None and c.note), "no runs")
    return Cell(note=why, metric=metric)


def _preamble(board: Leaderboard) -> list[str]:
    return [f"Selection: {board.selection_title} ({board.selection}).", f"Runs: {board.summary}.", SE_NOTE]


def _best_note(table: Table) -> str:
    """What bold means in this table: per column, which way is better; empty when nothing is bold."""
    directions = []
    for column in table.columns:
        if best_methods(table, column):
            meaning = metric(_column_cells(table, column)[0][1].metric)
            text = f"{meaning.title}: {'higher' if meaning.higher_is_better else 'lower'} is better"
            if text not in directions:
                directions.append(text)
    if not directions:
        return ""
    competing = set(table.rows) - REFERENCE_METHODS
    left_out = sorted(display_name(m) for m in set(table.rows) & REFERENCE_METHODS)
    text = f"Bold: the best mean of each column ({'; '.join(directions)})"
    if left_out and competing:
        text += f", among the methods other than {', '.join(left_out)}"
    return text + "."


def cells_note(table: Table) -> str:
    """What a table's numbers are and what bold means (plain text)."""
    text = "Mean ± standard error over trials (trials: their number per method; n=k: a cell over k trials)."
    best = _best_note(table)
    return text + (f" {best}" if best else "")


def caption_text(board: Leaderboard, table: Table) -> str:
    """What a table shows, for its caption (plain text)."""
    return f"{table.title}; selection: {board.selection_title}. {cells_note(table)}"


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
        out += ["| " + " | ".join(map(_md_escape, [row.method, str(row.trials), *row.values])) + " |" for row in rows]
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


def latex_label(board: Leaderboard, table: Table) -> str:
    """tab:DATASET-SOURCE-SELECTION (with "trained-on-every-env" after the source for a table
    whose runs trained on every environment: ``Table.name``), in the characters a label may
    safely hold."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{table.name}-{board.selection}").strip("-")
    return f"tab:{slug}"


def _latex_cell(text: str, bold: bool) -> str:
    """A cell's value in bold when it is its column's best; its note marks stay plain."""
    value, marks = re.fullmatch(r"(.*?)((?: \(n=\d+\))?(?: \[\d+\])?)", text).groups()
    value = latex_escape(value)
    return (r"\textbf{" + value + "}" if bold else value) + latex_escape(marks)


def to_latex(board: Leaderboard) -> str:
    """One booktabs table environment per table (needs \\usepackage{booktabs}): display names,
    a caption (what the cells are, what bold means) and a unique \\label above the tabular;
    the reference methods (the oracle) below a rule of their own."""
    out = ["% " + latex_escape(line) for line in _preamble(board)]
    seen: dict[str, int] = {}
    for table in board.tables:
        header, rows, notes = _cells(table, paper=True)
        label = latex_label(board, table)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:  # two tables of one dataset, source and selection: labels stay unique
            label += f"-{seen[label]}"
        out += ["", r"\begin{table}[t]", r"\centering",
                r"\caption{" + latex_escape(caption_text(board, table)) + "}",
                r"\label{" + label + "}",
                r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
                " & ".join(latex_escape(h) for h in ["Method", "Trials", *map(column_heading, header[2:])]) + r" \\",
                r"\midrule"]
        competing = [r for r in rows if r.method not in REFERENCE_METHODS]
        references = [r for r in rows if r.method in REFERENCE_METHODS]
        for i, row in enumerate(competing + references):
            if references and competing and i == len(competing):
                out.append(r"\midrule")
            cells = [_latex_cell(text, bold) for text, bold in zip(row.values, row.best)]
            out.append(" & ".join([latex_escape(display_name(row.method)), str(row.trials), *cells]) + r" \\")
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

# A report's page is 80em wide (report.STYLE); a table wider than this is split into parts.
HTML_WIDTH_EM = 72.0
_EM_PER_CHAR, _EM_PER_CELL = 0.55, 1.6  # a sans-serif digit, and a cell's padding and border


def _width_em(texts: list[str]) -> float:
    """A column's width: its longest cell, or its header's longest word (headers wrap)."""
    header, *cells = texts
    chars = max([len(t) for t in cells] + [len(w) for w in header.split()] + [1])
    return chars * _EM_PER_CHAR + _EM_PER_CELL


def column_parts(header: list[str], rows: list[_Row], width_em: float = HTML_WIDTH_EM) -> list[list[int]]:
    """The value columns (indices into ``table.columns``) in consecutive groups that each fit
    ``width_em`` beside the method and trials columns: one group when the whole table fits."""
    fixed = _width_em([header[0], *(display_name(r.method) for r in rows)]) + _width_em(
        [header[1], *(str(r.trials) for r in rows)])
    parts: list[list[int]] = [[]]
    used = fixed
    for i, column in enumerate(header[2:]):
        width = _width_em([column_heading(column), *(r.values[i] for r in rows)])
        if parts[-1] and used + width > width_em:
            parts.append([])
            used = fixed
        parts[-1].append(i)
        used += width
    return parts


def table_html(board: Leaderboard, table: Table) -> str:
    """The table with display names and the best cells in bold; a table too wide for the
    report's page is split into parts by column, each with the method and trials columns."""
    header, rows, notes = _cells(table, paper=True)
    esc = html.escape
    parts = column_parts(header, rows)
    out = []
    for number, columns in enumerate(parts, start=1):
        caption = table.title
        if len(parts) > 1:
            caption += f" (part {number} of {len(parts)})"
        headings = header[:2] + [column_heading(header[2 + i]) for i in columns]
        out += ['<table class="leaderboard">', f"<caption>{esc(caption)}</caption>",
                "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headings) + "</tr></thead>", "<tbody>"]
        for row in rows:
            kind = ' class="reference"' if row.method in REFERENCE_METHODS else ""
            tds = [f'<th scope="row">{esc(display_name(row.method))}</th>', f'<td class="value">{row.trials}</td>']
            for i in columns:
                text, bold = row.values[i], row.best[i]
                css = "missing" if text.startswith("n/a") else ("value best" if bold else "value")
                tds.append(f'<td class="{css}">' + (f"<strong>{esc(text)}</strong>" if bold else esc(text)) + "</td>")
            out.append(f"<tr{kind}>" + "".join(tds) + "</tr>")
        out.append("</tbody></table>")
    out.append(f'<p class="table-note">{esc(cells_note(table))}</p>')
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
