"""Session fixture: a real single-node SLURM cluster (scripts/slurm_cluster.sh), started
when its binaries are present and we are root, else the SLURM tests are skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.sh"
BINARIES = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct")


def _missing() -> list[str]:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


@pytest.fixture(scope="session")
def slurm_cluster():
    """Yields the cluster's SLURM_CONF path; sets SLURM_CONF for this process (the
    submitting process needs it) and stops every daemon afterwards, even when tests fail."""
    missing = _missing()
    if missing:
        pytest.skip(f"SLURM binaries missing: {', '.join(missing)} (.ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("the throwaway SLURM cluster needs root")
    folder = tempfile.mkdtemp(prefix="invbench-slurm.")
    started = subprocess.run([str(SCRIPT), "start", folder], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run([str(SCRIPT), "stop", folder], capture_output=True, timeout=120)
        pytest.fail(f"the SLURM cluster did not start:\n{started.stdout}\n{started.stderr}")
    conf = str(Path(folder) / "slurm.conf")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        subprocess.run([str(SCRIPT), "stop", folder], capture_output=True, timeout=120)


# Helpers shared by the sweep tests (this module is a pytest plugin: its fixtures are global).

FAILING_PLUGIN = '''
import os

from invbench.registry import METHODS
from invbench.methods.erm import ERM


@METHODS.register("boom")
class Boom(ERM):
    """ERM that raises at step 3 while the file $BOOM_FILE exists (a test's broken method)."""

    def objective(self, model, batches, step):
        if step == 3 and os.path.exists(os.environ["BOOM_FILE"]):
            raise RuntimeError("boom at step 3")
        return super().objective(model, batches, step)
'''


def sweep_text(out: Path, *, methods=("erm",), trials: int = 3, steps: int = 40, eval_every: int = 10,
               n_per_env: int = 200, executor: str = "local", extra: str = "") -> str:
    names = ", ".join(f'"{m}"' for m in methods)
    return f'''name = "t"
out = "{out}"
methods = [{names}]
trials = {trials}
steps = {steps}
eval_every = {eval_every}
hparams = {{ batch_size = 0 }}

[[datasets]]
name = "linear_sem"
options = {{ n_per_env = {n_per_env} }}

[executor]
kind = "{executor}"
workers = 2
threads = 1
{extra}'''


@pytest.fixture
def failing_plugin_env(tmp_path):
    """Environment variables that register the method "boom" (raises at step 3 while
    env["BOOM_FILE"] exists; it does at first) in every process started with them: the CLI,
    local workers and SLURM jobs (which inherit the environment)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "boom_plugin.py").write_text(FAILING_PLUGIN)
    (folder / "boom").touch()
    root = str(Path(__file__).resolve().parents[1])
    return {"INVBENCH_PLUGINS": "boom_plugin", "BOOM_FILE": str(folder / "boom"),
            "PYTHONPATH": os.pathsep.join([str(folder), root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def steps_of(run_dir: Path) -> list[int]:
    import json

    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
