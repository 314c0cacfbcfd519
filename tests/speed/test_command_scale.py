"""The sweep commands at scale: `sweep status` of 1,000 runs, and their submission to SLURM.

Targets: status under 2 s, submission under 10 s, each measured as a user meets it: a
fresh `invbench` process, start-up included. No SLURM cluster is needed: the submission
runs the real submitit with stand-ins for sbatch and sacct (tests/fake_slurm.py), so it
measures the launcher's own work up to and through submitit (expansion, checks, run
states, 1,000 pickled tasks, launch records), not a scheduler's.

Skipped by `make test` like every benchmark; run with
    .venv/bin/python -m pytest tests/speed/test_command_scale.py -o addopts="" --benchmark-only
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_slurm import fake_slurm

ROOT = Path(__file__).resolve().parents[2]
RUNS = 1_000
STATUS_TARGET_S, SUBMIT_TARGET_S = 2.0, 10.0
JOB = 4242

# 4 methods x 10 draws x 25 trials of a small linear SEM (full batch in every draw)
SWEEP = """name = "scale"
methods = ["erm", "irm", "vrex", "groupdro"]
hparam_draws = 10
trials = 25
[[datasets]]
name = "linear_sem"
options = {{ n_per_env = 50 }}
[executor]
kind = "slurm"
"""


def invbench(*args: str, env: dict) -> subprocess.CompletedProcess:
    import os

    result = subprocess.run([sys.executable, "-m", "invbench.cli", *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale")
    path = folder / "scale.toml"
    path.write_text(SWEEP.format())
    return path


def test_submission_of_1000_runs(benchmark, sweep_file, tmp_path):
    env = fake_slurm(tmp_path / "bin", job_id=JOB)
    rounds = iter(range(1_000))

    def fresh_out():
        return (str(tmp_path / f"round{next(rounds)}"),), {}

    def submit(out):
        result = invbench("sweep", "launch", str(sweep_file), "--out", out, env=env)
        assert f"launch: {RUNS} run(s) with the slurm executor" in result.stderr, result.stderr

    benchmark.group = "commands at 1,000 runs"
    benchmark.extra_info["target_s"] = SUBMIT_TARGET_S
    benchmark.pedantic(submit, setup=fresh_out, rounds=3)
    assert benchmark.stats.stats.mean < SUBMIT_TARGET_S


def test_status_of_1000_runs(benchmark, sweep_file, tmp_path):
    """Status of a sweep in progress: 800 done, 100 failed, 100 running (sacct says which)."""
    out = tmp_path / "out"
    invbench("sweep", "launch", str(sweep_file), "--out", str(out), env=fake_slurm(tmp_path / "submit", job_id=JOB))
    from invbench.sweep.expansion import expand
    from invbench.sweep.schema import load_sweep

    run_ids = {spec.dirname: spec.run_id for spec in expand(load_sweep(sweep_file))}
    lines = []
    for run_dir in sorted(p for p in out.iterdir() if (p / "launch.json").exists()):
        launch = json.loads((run_dir / "launch.json").read_text())
        index = int(launch["job_id"].split("_")[1])
        if index % 10 == 9:
            (run_dir / "error.json").write_text(json.dumps({"type": "RuntimeError", "message": "planted",
                                                            "traceback": "Traceback\n  boom", "time": 1e12}))
            lines.append(f"{launch['job_id']}|FAILED|node1")
        elif index % 10 == 8:
            (run_dir / "started.json").write_text(json.dumps({"job_id": launch["job_id"], "time": 1e12}))
            lines.append(f"{launch['job_id']}|RUNNING|node1")
        else:
            # a valid done record: rundir.check_done accepts nothing less
            (run_dir / "done.json").write_text(json.dumps({"run_id": run_ids[run_dir.name], "steps": 1, "wall_time": 30.0,
                                                           "source": {"name": "synthetic"}}))
            lines.append(f"{launch['job_id']}|COMPLETED|node1")
    assert len(lines) == RUNS
    env = fake_slurm(tmp_path / "status", job_id=JOB, sacct_lines="\n".join(lines) + "\n")

    def status():
        result = invbench("sweep", "status", str(sweep_file), "--out", str(out), env=env)
        assert "done: 800  failed: 100  stale: 0" in result.stdout and "running: 100" in result.stdout, result.stdout

    benchmark.group = "commands at 1,000 runs"
    benchmark.extra_info["target_s"] = STATUS_TARGET_S
    benchmark.pedantic(status, rounds=5)
    assert benchmark.stats.stats.mean < STATUS_TARGET_S
