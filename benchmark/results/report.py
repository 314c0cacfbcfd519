"""One self-contained HTML report: the leaderboards and their plots (PNG, base64-embedded).

No external files, scripts or fonts: the page opens offline, in a browser or as a CI
artifact. ``demo_summary`` is what ``make demo`` calls after its sweep.
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
table.leaderboard td.value { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.leaderboard td.missing { color: #888; font-style: italic; }
ol.notes { font-size: 0.85em; color: #555; }
figure { display: inline-block; margin: 0.5em; }
figcaption { font-size: 0.85em; color: #555; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    name = html.escape(Path(path).name)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{name}">'
            f"<figcaption>{name}</figcaption></figure>")


def report_html(board, plot_paths: list[Path], title: str = "invbench results") -> str:
    from invbench.results.render import table_html

    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             f"<h1>{esc(title)}</h1>",
             f"<p>Selection: <strong>{esc(board.selection_title)}</strong> ({esc(board.selection)}).</p>",
             f"<p>Runs: {esc(board.summary)}.</p>"]
    if board.notes:
        parts.append("<details><summary>Skipped lines and files</summary><ul>"
                     + "".join(f"<li>{esc(n)}</li>" for n in board.notes) + "</ul></details>")
    for table in board.tables:
        choice = f", {table.choice}" if table.choice else ""
        parts.append(f"<section><h2>{esc(table.dataset)} ({esc(table.source)}){esc(choice)}</h2>")
        parts.append(table_html(board, table))
        stem_paths = [p for p in plot_paths if Path(p).name.startswith(_stem(table, board))]
        parts += [_img(p) for p in stem_paths]
        parts.append("</section>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _stem(table, board) -> str:
    from invbench.results.plots import _slug

    return _slug(f"{table.name}-{board.selection}") + "-"


def write_report(root: Path | str, out_file: Path | str, selection: str = DEFAULT_SELECTION,
                 plots_dir: Path | str | None = None, include_unfinished: bool = False):
    """Collect ``root``, write the plots (to ``plots_dir`` or beside the report) and the HTML report."""
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
    """Write report_dir/report.html and report_dir/plots/*.png; return the Markdown leaderboard.

    The demo runs one configuration per method without a val split, so its numbers are
    the last checkpoint's (the IRM protocol's).
    """
    from invbench.results.render import to_markdown

    report_dir = Path(report_dir)
    board, _ = write_report(root, report_dir / "report.html", selection=selection, plots_dir=report_dir / "plots")
    return to_markdown(board) + f"\nHTML report: {report_dir / 'report.html'}\n"
