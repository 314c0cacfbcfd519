"""One self-contained HTML report: the leaderboards and their figures (PNG, base64-embedded).

No external files, scripts or fonts: the page opens offline, in a browser or as a CI
artifact. Each figure has a caption saying what it shows; a table without figures says
why. ``demo_summary`` is what ``make demo`` calls after its sweep.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from invbench.results.selection import DEFAULT_SELECTION, LAST

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 80em; }
table.leaderboard { border-collapse: collapse; margin: 1em 0; }
table.leaderboard caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
table.leaderboard th, table.leaderboard td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; }
table.leaderboard thead th { border-bottom: 2px solid #444; }
table.leaderboard tbody th { white-space: nowrap; text-align: left; }
table.leaderboard td.value { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.leaderboard td.missing { color: #888; font-style: italic; }
table.leaderboard thead th { vertical-align: bottom; }
table.leaderboard tr.reference th, table.leaderboard tr.reference td { color: #555; border-top: 1px solid #444; }
p.table-note, p.no-figure { font-size: 0.85em; color: #555; max-width: 60em; }
ol.notes { font-size: 0.85em; color: #555; }
figure { margin: 1em 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; max-width: 60em; }
"""


def _img(png: Path, caption: str, files: list[Path], dpi: float | None) -> str:
    """The PNG at its size in print (``dpi`` pixels per inch; CSS has 96 px per inch), so that
    every figure's text is one size on the page; a figure wider than the page shrinks to fit."""
    data = Path(png).read_bytes()
    esc = html.escape
    size = ""
    if dpi and data[12:16] == b"IHDR":
        width = int.from_bytes(data[16:20], "big")
        size = f' style="width: {round(width * 96 / dpi)}px"'
    names = Path(files[0]).name if len(files) == 1 else \
        Path(files[0]).stem + ".{" + ",".join(Path(f).suffix[1:] for f in files) + "}"
    return (f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{esc(caption)}"{size}>'
            f'<figcaption>{esc(caption)} <span class="files">File: {esc(names)}.</span></figcaption></figure>')


def _figures(plots, table, board) -> tuple[list[tuple[Path, str, list[Path], float | None]], list[str]]:
    """A table's figures as (PNG, caption, files, dpi) and why any of its figures is missing.
    ``plots`` is what write_plots returned, or a plain list of PNG paths (captioned by name)."""
    if hasattr(plots, "of"):
        from invbench.results.plots import PNG_DPI

        figures, missing = plots.of(table)
        return [(f.png, f.caption, f.files, PNG_DPI) for f in figures], missing
    stem = _stem(table, board)
    return [(Path(p), Path(p).name, [Path(p)], None) for p in plots if Path(p).name.startswith(stem)], []


def report_html(board, plot_paths, title: str = "invbench results") -> str:
    from invbench.results.render import SE_NOTE, table_html

    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             f"<h1>{esc(title)}</h1>",
             f"<p>Selection: <strong>{esc(board.selection_title)}</strong> ({esc(board.selection)}).</p>",
             f"<p>Runs: {esc(board.summary)}.</p>", f"<p>{esc(SE_NOTE)}</p>"]
    if board.notes:
        parts.append("<details><summary>Skipped lines and files</summary><ul>"
                     + "".join(f"<li>{esc(n)}</li>" for n in board.notes) + "</ul></details>")
    for table in board.tables:
        choice = f", {table.choice}" if table.choice else ""
        parts.append(f"<section><h2>{esc(table.dataset)} ({esc(table.source)}){esc(choice)}</h2>")
        parts.append(table_html(board, table))
        figures, missing = _figures(plot_paths, table, board)
        parts += [_img(*figure) for figure in figures]
        parts += [f'<p class="no-figure">{esc(why)}</p>' for why in missing]
        parts.append("</section>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _stem(table, board) -> str:
    from invbench.results.plots import table_stem

    return table_stem(board, table) + "-"


def write_report(root: Path | str, out_file: Path | str, selection: str = DEFAULT_SELECTION,
                 plots_dir: Path | str | None = None, include_unfinished: bool = False):
    """Collect ``root``, write the figures (to ``plots_dir`` or beside the report; PNG, PDF and
    SVG) and the HTML report. Returns the leaderboard and the written figures (plots.Plots)."""
    from invbench.results.aggregate import build_leaderboard
    from invbench.results.load import load_runs
    from invbench.results.plots import write_plots
    from invbench.results.selection import get_strategy

    results = load_runs(root, include_unfinished=include_unfinished)
    board = build_leaderboard(results, get_strategy(selection))
    out_file = Path(out_file)
    plots = write_plots(board, results.records, plots_dir or out_file.parent / "plots")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(report_html(board, plots))
    return board, plots


def demo_summary(root: Path, report_dir: Path, selection: str = LAST) -> str:
    """Write report_dir/report.html and report_dir/plots/ (PNG, PDF, SVG); return the Markdown leaderboard.

    The demo runs one configuration per method without a val split, so its numbers are
    the last checkpoint's (the IRM protocol's).
    """
    from invbench.results.render import to_markdown

    report_dir = Path(report_dir)
    board, _ = write_report(root, report_dir / "report.html", selection=selection, plots_dir=report_dir / "plots")
    return to_markdown(board) + f"\nHTML report: {report_dir / 'report.html'}\n"
