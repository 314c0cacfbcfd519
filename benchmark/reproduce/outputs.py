"""What a reproduction writes under results/NAME/: built from its tidy files alone.

- leaderboard-SELECTION.md / .csv / .tex for each of its selections (the paper's first);
- published_vs_ours.md and published_vs_ours.csv (table, row, column, published,
  published_spread, ours, ours_se, n), when the paper's numbers are in results/published;
- plots/ (PNG, PDF, SVG where the plotting module writes them);
- chunks.jsonl: one line per chunk that ran (what, when, how long, on what machine, the command);
- README.md: the protocol, the command, the machine, the wall time, every deviation, the
  headline table and the comparison with the paper.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invbench.reproduce import published as published_numbers
from invbench.reproduce import tidy
from invbench.reproduce.catalogue import Reproduction

CHUNKS = "chunks.jsonl"


def machine() -> dict[str, Any]:
    """What ran a chunk: CPU model, cores, Python and torch versions."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__}


def record_chunk(folder: Path, entry: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / CHUNKS, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def read_chunks(folder: Path) -> list[dict[str, Any]]:
    path = folder / CHUNKS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Written:
    files: list[Path]
    comparisons: list[Any]
    headline: str  # the first selection's markdown


def write_outputs(reproduction: Reproduction, folder: Path, published_folder: Path, expected_runs: int,
                  protocol_lines: list[str], sweep_header: str, command: str) -> Written:
    """Build every output of ``reproduction`` from the tidy files under ``folder``."""
    from invbench.results.aggregate import build_leaderboard
    from invbench.results.plots import write_plots
    from invbench.results.render import render
    from invbench.results.selection import get_strategy

    results = tidy.load(folder)
    deviation_lines = [line.split(" deviates: ", 1)[1] for line in protocol_lines if " deviates: " in line]
    files: list[Path] = []
    boards = {}
    for selection in reproduction.selections:
        board = build_leaderboard(results, get_strategy(selection))
        boards[selection] = board
        for fmt, suffix in (("md", "md"), ("csv", "csv"), ("latex", "tex")):
            path = folder / f"leaderboard-{selection}.{suffix}"
            text = render(board, fmt)
            if fmt == "md":  # where invbench deliberately differs, the leaderboard says so
                text += "\nDeviations from the papers' protocols:\n\n" + "".join(
                    f"- {line}\n" for line in (*reproduction.notes, *deviation_lines))
            path.write_text(text)
            files.append(path)
    headline = boards[reproduction.selections[0]]
    plots = folder / "plots"
    # curves need every evaluation: with the last step alone there is no curve to draw
    curves = results.records if reproduction.keep == "all" else results.records.iloc[0:0]
    files += [f for figure in write_plots(headline, curves, plots).figures for f in figure.files]
    comparisons = []
    if reproduction.published:
        items = published_numbers.read_published(published_folder / f"{reproduction.published}.csv")
        by_selection = _published_by_selection(items, reproduction)
        for selection, chosen in by_selection.items():
            board = boards.get(selection) or build_leaderboard(results, get_strategy(selection))
            comparisons += published_numbers.compare(chosen, board, results, dict(reproduction.dataset_map))
        published_numbers.write_csv(comparisons, folder / "published_vs_ours.csv")
        (folder / "published_vs_ours.md").write_text(published_numbers.to_markdown(comparisons))
        files += [folder / "published_vs_ours.csv", folder / "published_vs_ours.md"]
    tables = {selection: render(board, "md") for selection, board in boards.items()}
    readme = readme_text(reproduction, folder, results, expected_runs, tables, comparisons,
                         protocol_lines, sweep_header, command)
    (folder / "README.md").write_text(readme)
    files.append(folder / "README.md")
    return Written(files, comparisons, render(headline, "md"))


def _published_by_selection(items: list[Any], reproduction: Reproduction) -> dict[str, list[Any]]:
    """The published rows per selection: a protocol field "NAME; selection S" names its own,
    the others belong to the reproduction's first selection."""
    out: dict[str, list[Any]] = {}
    for item in items:
        selection = reproduction.selections[0]
        if "; selection " in item.protocol:
            selection = item.protocol.split("; selection ", 1)[1].strip()
        out.setdefault(selection, []).append(item)
    return out


def readme_text(reproduction: Reproduction, folder: Path, results: Any, expected_runs: int, tables: dict[str, str],
                comparisons: list[Any], protocol_lines: list[str], sweep_header: str, command: str) -> str:
    chunks = read_chunks(folder)
    done = results.runs["run_id"].nunique()
    # a chunk that only exported runs already kept adds no time
    wall = sum(c.get("wall_seconds", 0.0) for c in chunks if c.get("runs_new", 1))
    machines = sorted({json.dumps(c["machine"], sort_keys=True) for c in chunks if c.get("machine")})
    lines = [f"# {reproduction.title}", "",
             f"Regenerate: `{command}` (runs the missing runs of the sweep "
             f"`benchmark/sweeps/{reproduction.sweep}.toml`, keeps their tidy results in `tidy/`, and "
             f"rebuilds everything here from those files; `--report-only` rebuilds without training).", "",
             f"**Status**: {done:,} of {expected_runs:,} runs finished"
             + (" (complete)." if done >= expected_runs else
                ": this is a partial result; the tables show the cells whose runs finished."), ""]
    lines += ["## Protocol", "", *(f"    {line}" if line else "" for line in sweep_header.splitlines()), ""]
    lines += [f"- {line}" for line in protocol_lines]
    lines += ["", "## Machine and wall time", ""]
    if chunks:
        for text in machines:
            m = json.loads(text)
            gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
            lines.append(f"- {m['cpu']}, {m['cores']} cores{gpu}; Python {m['python']}, torch {m['torch']}")
        lines.append(f"- {len(chunks)} chunk(s), {wall / 3600:.2f} h of wall time in all "
                     f"(each chunk's command and time: `{CHUNKS}`)")
    else:
        lines.append("- no chunk has run on this machine yet")
    for number, (selection, table) in enumerate(tables.items()):
        role = "the paper's selection" if number == 0 else "for comparison"
        lines += ["", f"## Leaderboard: {selection} selection ({role})", "",
                  f"Mean over trials ± standard error over trials; files `leaderboard-{selection}.md/.csv/.tex`.",
                  "", table.strip(), ""]
    if comparisons:
        lines += ["## Published vs ours", "",
                  "Ours: mean over trials ± standard error; published: the paper's mean ± the spread it "
                  "reports (see `published_vs_ours.csv` and `results/published/`). The last column is "
                  "|ours - published| divided by the published spread (within 1: inside it).", "",
                  published_numbers.to_markdown(comparisons).strip(), ""]
    lines += ["## Deviations", ""]
    lines += [f"- {note}" for note in reproduction.notes] or ["- none beyond the protocol's"]
    lines.append("")
    return "\n".join(lines)
