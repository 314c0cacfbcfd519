"""The self-contained HTML report: tables and decoded images, checked in headless Chromium."""

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from invbench.results.report import demo_summary, write_report

SWEEP = Path(__file__).parent / "fixtures" / "golden_sweep"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PNG = b"\x89PNG\r\n\x1a\n"

# Added by the test only (the report itself has no scripts): records script errors and
# each image's decoded width in the DOM, which --dump-dom then prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => { window.__errors.push(String(e.message)); });
window.addEventListener("load", () => {
  const out = document.createElement("pre"); out.id = "probe";
  const widths = Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1);
  out.textContent = JSON.stringify({widths: widths, errors: window.__errors,
                                    tables: document.querySelectorAll("table.leaderboard").length});
  document.body.appendChild(out);
});
</script>"""


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("src", "href"):
            if attrs.get(name) and not attrs[name].startswith("data:"):
                self.external.append(attrs[name])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    board, plots = write_report(SWEEP, out / "report.html", selection="oracle")
    return out / "report.html", board, plots


def test_report_is_self_contained_with_every_table_and_plot(report):
    path, board, plots = report
    parser = _Collector()
    parser.feed(path.read_text())
    assert parser.tags.count("table") == len(board.tables) == 2
    # one table with values (golden_toy) gets 3 plots; linear_sem has no oracle values
    assert len(plots) == 3 and len(parser.images) == 3
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    assert parser.external == []
    assert (path.parent / "plots").is_dir() and all(p.read_bytes()[:8] == PNG for p in plots)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs Debian's chromium)")
def test_report_opens_in_headless_chromium_without_errors(report, tmp_path):
    import json

    path, board, _ = report
    probed = tmp_path / "probed.html"
    probed.write_text(path.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S).group(1).replace("&quot;", '"'))
    assert probe["errors"] == []
    assert probe["tables"] == 2
    assert len(probe["widths"]) == 3 and all(w > 100 for w in probe["widths"])  # every PNG decoded


def test_demo_summary_writes_report_and_returns_the_markdown_leaderboard(tmp_path):
    text = demo_summary(SWEEP, tmp_path / "demo")
    assert "### linear_sem, source synthetic (n=600), test environment sigma=5, test MSE (lower is better)" in text
    assert "| irm | 2 | 281.2 ± 27 |" in text  # the golden last-checkpoint value
    assert (tmp_path / "demo" / "report.html").exists()
    assert sorted(p.name.split("-")[-1] for p in (tmp_path / "demo" / "plots").iterdir()) == sorted(
        f"{kind}.{fmt}" for kind in ("curves", "envs", "heatmap") for fmt in ("png", "pdf", "svg"))


# A table with many columns: the leave-one-out table of eight environments, with the
# causal error of every environment (26 value columns).
WIDE_PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre"); out.id = "probe";
  const page = document.documentElement.clientWidth;
  const tables = Array.from(document.querySelectorAll("table.leaderboard")).map(t => t.getBoundingClientRect().right);
  out.textContent = JSON.stringify({page: page, scroll: document.documentElement.scrollWidth, tables: tables});
  document.body.appendChild(out);
});
</script>"""


def wide_board():
    from invbench.results.aggregate import Cell, Leaderboard, Table

    envs = [f"environment {i}" for i in range(8)]
    columns = envs + ["avg", "worst"] + [f"causal_error ({e})" for e in envs] + [f"noncausal_error ({e})" for e in envs]
    rows = {}
    for k, method in enumerate(("erm", "irm", "vrex", "groupdro", "oracle")):
        cells = {c: Cell(281.2345 / (k + 1), 27.01, 2, "one trial diverged", "mse") for c in columns[:10]}
        cells.update({c: Cell(0.00123 * (k + 1), 0.0004, 3, "", c.split(" ")[0]) for c in columns[10:]})
        rows[method] = (3, cells)
    table = Table("linear_sem", "synthetic (n=3000)", "mse", columns, rows)
    return Leaderboard("loo", "leave-one-environment-out", [table], None, "120 finished run(s)")


def test_a_wide_table_is_split_into_parts_that_keep_every_column_once():
    from invbench.results.report import report_html

    page = report_html(wide_board(), [])
    parts = re.findall(r'<table class="leaderboard">.*?</table>', page, re.S)
    assert len(parts) >= 2
    headers = [re.findall(r"<th>(.*?)</th>", part) for part in parts]
    assert all(h[:2] == ["method", "trials"] for h in headers)
    values = [h for part in headers for h in part[2:]]
    assert len(values) == len(set(values)) == 26
    assert all(f"(part {i} of {len(parts)})" in part for i, part in enumerate(parts, start=1))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs Debian's chromium)")
def test_a_wide_table_fits_the_page_in_headless_chromium(tmp_path):
    import json

    from invbench.results.report import report_html

    probed = tmp_path / "wide.html"
    probed.write_text(report_html(wide_board(), []).replace("</body>", WIDE_PROBE + "</body>"))
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S).group(1).replace("&quot;", '"'))
    assert probe["scroll"] <= probe["page"]  # no horizontal scrolling
    assert probe["tables"] and all(right <= probe["page"] for right in probe["tables"])
