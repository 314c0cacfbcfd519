"""Figures fit for a paper: one colour per method everywhere, log axes for losses that span
decades, PNG + PDF + SVG, no empty panels, captions that say what a figure shows."""

import subprocess
import sys
from pathlib import Path

import matplotlib
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from fake_runs import record, write_run  # noqa: E402

from invbench.results.aggregate import build_leaderboard  # noqa: E402
from invbench.results.load import load_runs  # noqa: E402
from invbench.results.selection import get_strategy  # noqa: E402

matplotlib.use("Agg", force=True)

# The papers' names, written out here rather than imported: legends may use either name.
NAMES = {"ERM": "erm", "IRMv1": "irm", "V-REx": "vrex", "Group DRO": "groupdro", "Oracle": "oracle"}


def sweep(root, scores, *, metric="mse", penalty=None, trials=3, envs=("e1", "e2", "e3")):
    """Runs with known values. ``scores``: method -> the test env's score at the last step
    (trial t adds 1% of it per t); training envs score half of it; ``penalty``: method ->
    (first, last) penalty, or None for no penalty at all."""
    task = "regression" if metric == "mse" else "binary"
    for method, score in scores.items():
        for trial in range(trials):
            records = []
            for step in (0, 10, 20):
                value = score * (1 + 0.01 * trial) * (1 + (20 - step) / 20)
                values = {env: {"train": value if env == envs[-1] else value / 2} for env in envs}
                extra = {}
                if penalty and method in penalty:
                    first, last = penalty[method]
                    extra["train"] = {"penalty": first + (last - first) * step / 20}
                records.append(record(step, values, metric=metric, **extra))
            write_run(root, dataset="sem", method=method, envs=envs, test_envs=(len(envs) - 1,), trial=trial,
                      task=task, records=records)
    results = load_runs(root)
    return build_leaderboard(results, get_strategy("last")), results.records


def colours_by_method(fig) -> dict[str, str]:
    """Legend label (normalised to the method's registered name) -> colour, over every legend."""
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    out = {}
    for legend in legends:
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            colour = handle.get_color() if isinstance(handle, Line2D) else handle.get_facecolor()
            out[NAMES.get(text.get_text(), text.get_text())] = to_hex(colour)
    return out


def bar_colours(ax) -> set[str]:
    return {to_hex(p.get_facecolor()) for p in ax.patches if p.get_height() > 0}


def test_a_method_keeps_its_colour_whatever_the_other_methods(tmp_path):
    from invbench.results import plots

    four, four_records = sweep(tmp_path / "four", {"erm": 16.0, "irm": 7.0, "vrex": 6.0, "groupdro": 8.0},
                               penalty={"irm": (1.0, 0.1), "vrex": (2.0, 0.2)})
    two, two_records = sweep(tmp_path / "two", {"irm": 7.0, "groupdro": 8.0}, penalty={"irm": (1.0, 0.1)})
    for make in (lambda b, r: plots.env_bars(b, b.tables[0]), lambda b, r: plots.curves(b, b.tables[0], r)):
        big, small = colours_by_method(make(four, four_records)), colours_by_method(make(two, two_records))
        assert {"irm", "groupdro"} <= set(small) and {"erm", "irm", "vrex", "groupdro"} <= set(big)
        assert small["irm"] == big["irm"] and small["groupdro"] == big["groupdro"]
        assert len({big[m] for m in ("erm", "irm", "vrex", "groupdro")}) == 4
    # the bars are drawn in the legend's colours
    fig = plots.env_bars(two, two.tables[0])
    assert bar_colours(fig.axes[0]) == {colours_by_method(fig)["irm"], colours_by_method(fig)["groupdro"]}
    matplotlib.pyplot.close("all")


def test_the_palette_is_fixed_distinct_and_stable_across_processes():
    from invbench.results.display import DISPLAY_NAMES, METHOD_COLOURS, method_colour

    assert len(set(METHOD_COLOURS.values())) == len(METHOD_COLOURS) == len(DISPLAY_NAMES) == 14
    # the Okabe-Ito colours (colour-blind safe) go to the methods of the headline tables
    assert [method_colour(m) for m in ("irm", "vrex", "groupdro")] == ["#0072B2", "#D55E00", "#009E73"]
    # a plugin's method: the same colour in every process (Python's hash() is salted per process)
    code = "from invbench.results.display import method_colour; print(method_colour('my_plugin_method'))"
    seen = {subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True,
                           text=True, check=True).stdout for seed in ("1", "2")}
    assert len(seen) == 1


def test_loss_axes_go_log_only_when_they_span_decades(tmp_path):
    from invbench.results import plots

    wide, wide_records = sweep(tmp_path / "wide", {"erm": 300.0, "irm": 1.5},
                               penalty={"irm": (50.0, 0.01)})  # 300 / 1.5 = 200 > 100; penalty 5000x
    narrow, narrow_records = sweep(tmp_path / "narrow", {"erm": 16.0, "irm": 7.0},
                                   penalty={"irm": (2.0, 0.5)})
    acc, _ = sweep(tmp_path / "acc", {"erm": 0.005, "irm": 0.9}, metric="acc")  # 180x, but accuracy
    assert plots.env_bars(wide, wide.tables[0]).axes[0].get_yscale() == "log"
    assert plots.env_bars(narrow, narrow.tables[0]).axes[0].get_yscale() == "linear"
    assert plots.env_bars(acc, acc.tables[0]).axes[0].get_yscale() == "linear"
    # curves: score (test 300..1.5 plus training envs) and penalty (50..0.01) both span decades
    assert [ax.get_yscale() for ax in plots.curves(wide, wide.tables[0], wide_records).axes] == ["log", "log"]
    assert [ax.get_yscale() for ax in plots.curves(narrow, narrow.tables[0], narrow_records).axes] == \
        ["linear", "linear"]
    assert plots.log_scale([1.0, 101.0]) and not plots.log_scale([1.0, 99.0])
    assert not plots.log_scale([-1.0, 0.001, 1000.0])  # a negative value cannot be shown on a log axis
    matplotlib.pyplot.close("all")


def test_figures_are_written_as_png_pdf_and_svg_and_are_reproducible(tmp_path):
    from invbench.results.plots import write_plots

    board, records = sweep(tmp_path / "runs", {"erm": 16.0, "irm": 7.0}, penalty={"irm": (1.0, 0.1)})
    first = write_plots(board, records, tmp_path / "a")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert sorted(name.rsplit("-", 1)[1] for name in files) == sorted(
        f"{kind}.{fmt}" for kind in ("curves", "envs", "heatmap") for fmt in ("png", "pdf", "svg"))
    for path in (tmp_path / "a").iterdir():
        head = path.read_bytes()[:200]
        assert {"png": head[:8] == b"\x89PNG\r\n\x1a\n", "pdf": head[:5] == b"%PDF-",
                "svg": b"<svg" in path.read_bytes()[:2000]}[path.suffix[1:]], path.name
    assert len(first) == 3  # figures, each in three formats
    # no dates or random ids: regenerated figures are the same files (they get committed)
    write_plots(board, records, tmp_path / "b")
    for name in files:
        if not name.endswith(".png"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def _has_data(ax) -> bool:
    return bool(ax.lines or [p for p in ax.patches if p.get_height()] or ax.collections or ax.images)


def test_no_empty_panels_and_no_figure_without_data(tmp_path):
    from invbench.results import plots
    from invbench.results.plots import write_plots

    # no method has a penalty: the curves are one panel, not a panel that says so
    board, records = sweep(tmp_path / "runs", {"erm": 16.0, "groupdro": 8.0})
    fig = plots.curves(board, board.tables[0], records)
    assert len(fig.axes) == 1 and all(_has_data(ax) for ax in fig.axes)
    assert not [t for ax in fig.axes for t in ax.texts]  # no "nothing here" text in place of data
    matplotlib.pyplot.close("all")
    # records of the selected runs gone: no curves file, and why
    written = write_plots(board, records.iloc[0:0], tmp_path / "plots")
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert not [n for n in names if "curves" in n] and len(names) == 6
    assert any("training curves" in why for _, why in written.not_written)


def test_captions_say_what_a_figure_shows(tmp_path):
    from invbench.results.report import write_report

    sweep(tmp_path / "runs", {"erm": 300.0, "irm": 1.5}, penalty={"irm": (50.0, 0.01)})
    write_report(tmp_path / "runs", tmp_path / "out" / "report.html", selection="last")
    page = (tmp_path / "out" / "report.html").read_text()
    captions = page.split("<figcaption>")[1:]
    assert len(captions) == 3
    for caption in captions:
        caption = caption.split("</figcaption>")[0]
        assert "sem" in caption and "last checkpoint" in caption and "MSE" in caption
        assert "n = 3 trials" in caption
        assert "(log scale)" in caption or "on a log scale" in caption
    bars, _, curves = (c.split("</figcaption>")[0] for c in captions)
    assert "error bars: ±1 standard error over trials" in bars
    assert "bands: ±1 standard error over trials" in curves and "penalty" in curves


def test_the_report_says_why_a_table_has_no_figures(tmp_path):
    from invbench.results.report import write_report

    root = tmp_path / "runs"
    sweep(root, {"erm": 16.0})
    # a second dataset whose runs have two configurations: the last checkpoint selects none
    for hp in (0, 1):
        write_run(root, dataset="other", method="erm", test_envs=(2,), hparams_seed=hp, task="binary",
                  records=[record(0, {e: {"train": 0.5} for e in "abc"})])
    board, plots = write_report(root, tmp_path / "out" / "report.html", selection="last")
    page = (tmp_path / "out" / "report.html").read_text()
    assert len(board.tables) == 2 and len(plots) == 3
    other = page.split("<h2>other")[1].split("</section>")[0]
    assert "<img" not in other and "no figures: no cell of this table has a value" in other


def mixed_sweep(root):
    """One dataset with both test-set choices, one trial each: runs that held e3 out (MSE on
    e3: erm 10, irm 20) and runs that trained on every environment (their "test" split:
    erm 100/200/300, irm 400/500/600 on e1/e2/e3), as the IRM paper's pooled ERM beside IRM."""
    envs = ("e1", "e2", "e3")
    for method, held, pooled in (("erm", 10.0, (100.0, 200.0, 300.0)), ("irm", 20.0, (400.0, 500.0, 600.0))):
        write_run(root, dataset="sem", method=method, envs=envs, test_envs=(2,), task="regression",
                  records=[record(step, {"e1": {"train": 1.0}, "e2": {"train": 1.0}, "e3": {"train": held}},
                                  metric="mse") for step in (0, 10, 20)])
        write_run(root, dataset="sem", method=method, envs=envs, test_envs=(), task="regression",
                  records=[record(step, {e: {"train": 1.0, "test": v} for e, v in zip(envs, pooled)}, metric="mse")
                           for step in (0, 10, 20)])
    results = load_runs(root)
    return build_leaderboard(results, get_strategy("last")), results.records


def bar_heights(ax) -> list[float]:
    return sorted(round(p.get_height(), 6) for p in ax.patches if p.get_height() > 0)


def test_each_test_set_choice_is_drawn_from_its_own_runs_and_says_which_it_is(tmp_path):
    from invbench.results import plots

    board, _ = mixed_sweep(tmp_path / "runs")
    held, pooled = board.tables
    assert not held.trained_on_every_env and pooled.trained_on_every_env
    # the held-out table's bars are the e3 scores of the runs that held e3 out, nothing pooled
    fig = plots.env_bars(board, held)
    assert bar_heights(fig.axes[0]) == [10.0, 20.0]
    assert fig.axes[0].get_xlabel() == "test environment"
    assert "trained on every environment" not in fig.axes[0].get_title()
    # the pooled table: every environment's "test" split, an axis of environments, not test environments
    fig = plots.env_bars(board, pooled)
    assert bar_heights(fig.axes[0]) == [100.0, 200.0, 300.0, 400.0, 500.0, 600.0]
    assert fig.axes[0].get_xlabel() == "environment"
    assert "trained on every environment" in fig.axes[0].get_title()
    assert "test split" in fig.axes[0].get_ylabel() and not fig.axes[0].get_ylabel().startswith("test ")
    heat = plots.heatmap(board, pooled).axes[0]
    assert heat.get_xlabel() == "environment" and [t.get_text() for t in heat.get_xticklabels()] == ["e1", "e2", "e3"]
    curves = plots.curves(board, pooled, load_runs(tmp_path / "runs").records)
    assert [ax.get_title().split(":")[0] for ax in curves.axes] == ["environment e1", "environment e2", "environment e3"]
    matplotlib.pyplot.close("all")


def test_the_report_gives_each_test_set_choice_its_own_section_figures_and_files(tmp_path):
    from invbench.results.render import to_latex
    from invbench.results.report import write_report

    mixed_sweep(tmp_path / "runs")
    board, written = write_report(tmp_path / "runs", tmp_path / "out" / "report.html", selection="last")
    held, pooled = board.tables
    names = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert len(names) == 18  # two tables, three figures each, three formats each: none overwritten
    assert sum("-trained_on_every_env-" in n for n in names) == 9
    page = (tmp_path / "out" / "report.html").read_text()
    sections = page.split("<section>")[1:]
    assert len(sections) == 2
    assert f"<h2>sem ({held.source}), test environment e3</h2>" in sections[0]
    assert f"<h2>sem ({pooled.source}), trained on every environment</h2>" in sections[1]
    for section, choice in zip(sections, ("test environment e3", "trained on every environment")):
        captions = [c.split("</figcaption>")[0] for c in section.split("<figcaption>")[1:]]
        assert len(captions) == 3 and all(choice in c for c in captions)
    assert "trained_on_every_env" not in sections[0] and sections[1].count("trained_on_every_env") == 3
    # one LaTeX label per table, named by its choice rather than by its order
    tex = to_latex(board)
    assert r"\label{tab:sem-synthetic-n-300-last}" in tex
    assert r"\label{tab:sem-synthetic-n-300-trained-on-every-env-last}" in tex
