"""The built wheel installs one namespace, ``invbench``, that lives beside other packages.

A generic top-level ``datasets`` (Hugging Face's) is in most ML environments: the wheel
must not install or shadow one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "benchmark", "methods", "datasets"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True)
    (built,) = dist.glob("invbench-*.whl")
    return built


def test_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"invbench"}
    assert "invbench/methods/irm.py" in names and "invbench/datasets/linear_sem.py" in names
    assert "invbench/sweeps/demo.toml" in names


def test_wheel_installs_beside_a_package_named_datasets(wheel, tmp_path):
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # torch, pandas and the rest come from this environment's site-packages as a plain path
    # (not a site dir, so its editable finder for the source tree stays inactive)
    deps = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_paths()["purelib"]]
    (site / "dependencies.pth").write_text("\n".join(deps) + "\n")
    hf = site / "datasets"
    hf.mkdir()
    (hf / "__init__.py").write_text("WHO = 'huggingface'\n\ndef load_dataset(name):\n    return name\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    code = (
        "import datasets, invbench, invbench.datasets, invbench.methods\n"
        "from invbench.registry import DATASETS, METHODS\n"
        "from invbench.sweep.schema import shipped_sweeps\n"
        "assert datasets.WHO == 'huggingface', datasets.__file__\n"
        f"assert invbench.__file__.startswith({str(site)!r}), invbench.__file__\n"
        "assert 'linear_sem' in DATASETS.names() and 'irm' in METHODS.names()\n"
        "assert 'demo' in shipped_sweeps()\n"
        "print('ok')\n"
    )
    result = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    listing = subprocess.run([str(python), "-m", "invbench.cli", "list", "methods"], cwd=tmp_path,
                             capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "irm" in listing.stdout
