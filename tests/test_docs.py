"""The docs are true: their code runs, and nothing points outside the repository.

Every Python block of docs/adding_a_method.md and docs/adding_a_dataset.md runs: a block
that starts with a file name (``# methods/my_method.py``) becomes that module, registered
through INVBENCH_PLUGINS in fresh processes; a test file (``# tests/test_x.py``) is run by
pytest; any other block is executed as a script; and every ``invbench`` command of the
docs runs, training runs for two steps.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from idx_helpers import write_dataset

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "adding_a_method.md", ROOT / "docs" / "adding_a_dataset.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FILE_HEADER = re.compile(r"# (\S+\.py)\n")

# Runs the script blocks, the commands, then the docs' test files, in one process (one torch
# import for all).
DRIVER = textwrap.dedent('''
    import json, sys
    import pytest
    from invbench.cli import main

    plan = json.load(open(sys.argv[1]))
    for code in plan["scripts"]:
        exec(compile(code, "<doc block>", "exec"), {"__name__": "__main__"})
    for argv in plan["commands"]:
        print("$ invbench " + " ".join(argv), flush=True)
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        if code:
            sys.exit(f"exit {code}: invbench " + " ".join(argv))
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *plan["tests"]]))
''')


def doc_blocks(doc: Path) -> list[tuple[str, str]]:
    return FENCE.findall(doc.read_text())


def plan_for(docs: list[Path], runs: Path) -> tuple[dict[str, str], list[str], list[list[str]]]:
    """Files (name -> source), script blocks, and the commands to run."""
    files, scripts, commands = {}, [], []
    for doc in docs:
        for lang, body in doc_blocks(doc):
            if lang == "python":
                header = FILE_HEADER.match(body)
                if header:
                    files[Path(header.group(1)).name] = body
                else:
                    scripts.append(body)
                continue
            for line in body.splitlines():
                if not line.startswith("invbench "):
                    continue
                argv = shlex.split(line, comments=True)[1:]
                if argv[0] == "run":
                    argv += ["--steps", "2", "--eval-every", "1", "--out", str(runs)]
                commands.append(argv)
    return files, scripts, commands


@pytest.mark.slow
def test_every_code_block_of_the_docs_runs(tmp_path):
    files, scripts, commands = plan_for(DOCS, tmp_path / "runs")
    # what the docs promise: modules, tests, a script, and training commands
    assert {"my_method.py", "spread_rex.py", "spurious_gaussians.py", "colored_kmnist.py"} <= set(files)
    assert {"test_spread_rex.py", "test_spurious_gaussians.py"} <= set(files)
    assert scripts and sum(argv[0] == "run" for argv in commands) >= 5

    code = tmp_path / "code"
    code.mkdir()
    for name, source in files.items():
        (code / name).write_text(source)
    modules = sorted(Path(name).stem for name in files if not name.startswith("test_"))
    # the KMNIST files the image example reads, in a data directory of their own
    write_dataset(tmp_path / "data", 120, 20, layout="KMNIST/raw")
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")])),
        "INVBENCH_PLUGINS": ",".join(modules), "INVBENCH_DATA": str(tmp_path / "data"),
        "INVBENCH_OFFLINE": "1", "OMP_NUM_THREADS": "1",
    }

    tests = sorted(str(code / name) for name in files if name.startswith("test_"))
    (tmp_path / "plan.json").write_text(json.dumps({"scripts": scripts, "commands": commands, "tests": tests}))
    (tmp_path / "driver.py").write_text(DRIVER)
    driven = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "plan.json")],
                            cwd=code, env=env, capture_output=True, text=True, timeout=600)
    assert driven.returncode == 0, driven.stdout[-6000:] + driven.stderr[-4000:]
    assert re.search(r"\b8 passed\b", driven.stdout), driven.stdout[-2000:]
    out = driven.stdout
    for name in ("my_method:", "spread_rex:", "spurious_gaussians:", "ckmnist_irm:"):
        assert f"  {name}" in out, f"{name} not listed"
    assert "models that fit: cnn, linear, linear_nobias, linear_torch_init, mlp, mlp_grayscale" in out  # the oracle refused images
    done = sorted(p.parent.name.split("-")[:2] for p in (tmp_path / "runs").glob("*/done.json"))
    assert ["ckmnist_irm", "erm"] in done and ["spurious_gaussians", "irm"] in done
    assert ["linear_sem", "spread_rex"] in done and ["linear_sem", "my_method"] in done
    kmnist = next((tmp_path / "runs").glob("ckmnist_irm-*/dataset.json"))
    assert json.loads(kmnist.read_text())["source"]["name"] == "kmnist"


def test_the_plan_finds_files_scripts_and_commands(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```python\n# pkg/mod.py\nX = 1\n```\n\n```python\nprint(2)\n```\n\n"
                   "```\ninvbench list   # a comment\nPYTHONPATH=x invbench run -d a -m b\n"
                   "invbench run -d a -m b --steps 200\n```\n")
    files, scripts, commands = plan_for([doc], tmp_path / "runs")
    assert files == {"mod.py": "# pkg/mod.py\nX = 1\n"} and scripts == ["print(2)\n"]
    assert commands == [["list"], ["run", "-d", "a", "-m", "b", "--steps", "200", "--steps", "2",
                                   "--eval-every", "1", "--out", str(tmp_path / "runs")]]


# No pointers outside the repository -------------------------------------------------------

# Built from pieces, so that this file does not match its own search.
OUTSIDE = "\\|".join(["shared" + "/", "reference" + ".md", "design" + " note"])


def test_nothing_points_outside_the_repository():
    try:
        found = subprocess.run(["git", "grep", "--untracked", "-n", OUTSIDE], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if found.returncode not in (0, 1) or "not a git repository" in found.stderr:
        pytest.skip("not a git checkout")
    hits = [line for line in found.stdout.splitlines()
            if not Path(line.split(":", 1)[0]).name.upper().startswith("CHANGELOG")]
    assert hits == [], "\n".join(hits)


# Help texts that are true ------------------------------------------------------------------

def _subparser(parser, name):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]


@pytest.mark.parametrize("action", ["launch", "retry"])
def test_a_sweep_option_whose_help_gives_0_a_meaning_accepts_0(action):
    from invbench.cli import build_parser
    from invbench.commands.sweep import load

    parser = build_parser()
    command = _subparser(_subparser(parser, "sweep"), action)
    promising = [a for a in command._actions if a.help and "0 = " in a.help]
    assert promising
    for option in promising:
        args = parser.parse_args(["sweep", action, "demo", option.option_strings[0], "0"])
        load(args)  # no "must be >= 1"
