"""The shape of the code: no import cycle in the sweep package, each shared name defined in
one module, and the read-only commands (`collect`, `sweep status`) starting without torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "benchmark" / "sweep"
GOLDEN = ROOT / "tests" / "fixtures" / "golden_sweep"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT / "benchmark").with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["invbench", *parts])


def _imports(path: Path, known: set[str]) -> set[str]:
    """The sweep modules ``path`` imports anywhere (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_the_sweep_modules_import_each_other_without_a_cycle():
    files = {_module_name(p): p for p in SWEEP.rglob("*.py")}
    known = set(files)
    graph = {name: _imports(path, known) - {name} for name, path in files.items()}
    # the executors' package imports its kinds' modules by name (importlib), on demand
    from invbench.sweep.executors import _KINDS

    graph["invbench.sweep.executors"] |= {f"invbench.sweep.executors.{module}" for module, _, _ in _KINDS.values()}

    def cycle_from(start):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, " -> ".join(cycles[0])
    assert "invbench.sweep.state" not in graph["invbench.sweep.executors.base"]


# Each family of shared names is written out in one module; everything else imports it.
# A family is "written out" where a tuple, list, set or dict holds two of its names, or
# (for names no other word shares) where one of them appears as a string at all.
FAMILIES = {
    "splits": ({"train", "val", "test"}, set(), "benchmark/splits.py"),
    "selections": ({"training_domain", "loo", "oracle", "last"}, {"training_domain", "loo"},
                   "benchmark/results/selection.py"),
    "executors": ({"inline", "local", "slurm"}, set(), "benchmark/sweep/executors/__init__.py"),
}


def _writes_out(tree: ast.AST, names: set[str], distinctive: set[str]) -> bool:
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            if sum(isinstance(i, ast.Constant) and i.value in names for i in items) >= 2:
                return True
        if isinstance(node, ast.Constant) and node.value in distinctive and id(node) not in docstrings:
            return True
    return False


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_names_are_written_out_in_one_module(family):
    names, distinctive, home = FAMILIES[family]
    sources = [p for folder in ("benchmark", "methods", "datasets", "scripts") for p in (ROOT / folder).rglob("*.py")]
    where = sorted(str(p.relative_to(ROOT)) for p in sources
                   if _writes_out(ast.parse(p.read_text()), names, distinctive))
    assert where == [home]


def test_the_command_line_offers_the_defined_names():
    from invbench.cli import build_parser
    from invbench.results.selection import SELECTIONS, STRATEGIES
    from invbench.sweep.executors import EXECUTORS
    from invbench.sweep.schema import ExecutorSettings, keys

    def choices(*path):
        parser = build_parser()
        for name in path:
            parser = next(a for a in parser._actions if a.choices and name in a.choices).choices[name]
        return {tuple(a.option_strings): a.choices for a in parser._actions if a.choices}

    assert SELECTIONS == tuple(STRATEGIES)
    assert choices("collect")[("--selection", "-s")] == SELECTIONS
    assert choices("compare")[("--selection", "-s")] == SELECTIONS
    assert choices("sweep", "launch")[("--executor",)] == EXECUTORS
    assert keys(ExecutorSettings)["kind"].rule.options == EXECUTORS


def _torch_free(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, then print the torch modules it imported."""
    script = code + "\nimport sys\nprint('torch modules:', sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_collect_starts_without_torch():
    result = _torch_free(f"from invbench.cli import main\nassert main(['collect', {str(GOLDEN)!r}, '-s', 'last']) == 0")
    assert result.returncode == 0, result.stderr
    assert "| erm |" in result.stdout
    assert result.stdout.rstrip().endswith("torch modules: []"), result.stdout[-400:]


def test_status_of_a_launched_sweep_starts_without_torch(tmp_path):
    from invbench.sweep.launches import write_launch
    from invbench.sweep.runlist import sweep_specs
    from invbench.sweep.schema import load_sweep

    sweep = tmp_path / "s.toml"
    out = tmp_path / "out"
    sweep.write_text(f'name = "s"\nout = "{out}"\nmethods = ["erm", "vrex"]\ntrials = 2\n'
                     '[[datasets]]\nname = "linear_sem"\noptions = { n_per_env = 50 }\n')
    out.mkdir()
    specs = sweep_specs(load_sweep(sweep))  # what a launch stores
    done = out / specs[0].dirname
    done.mkdir()
    (done / "done.json").write_text(json.dumps({"run_id": specs[0].run_id, "steps": specs[0].steps,
                                                "source": {"name": "synthetic"}, "wall_time": 3.0}))
    write_launch(done, "local", "host:1:x", lock=str(tmp_path / "gone.lock"), pid=1, host="elsewhere")
    result = _torch_free(f"from invbench.cli import main\nassert main(['sweep', 'status', {str(sweep)!r}]) == 0")
    assert result.returncode == 0, result.stderr
    assert "4 runs" in result.stdout and "not launched: 3" in result.stdout and "done: 1" in result.stdout
    assert result.stdout.rstrip().endswith("torch modules: []"), result.stdout[-400:]
