"""The SLURM executor against a real single-node cluster (tests/slurm_cluster.py starts it;
skipped where the SLURM binaries are missing)."""

import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_cli
from slurm_cluster import steps_of, sweep_text

from invbench.sweep import launcher
from invbench.sweep.expansion import expand
from invbench.sweep.schema import load_sweep
from invbench.sweep.state import DONE_STATE, FAILED, QUEUED, RUNNING, run_states

pytestmark = pytest.mark.slurm


def write(tmp_path, name, **kwargs):
    path = tmp_path / name
    path.write_text(sweep_text(tmp_path / kwargs.pop("out"), **kwargs))
    return path


def wait_for(config, states, timeout=150, specs=None):
    specs = specs or expand(config)
    deadline = time.monotonic() + timeout
    while True:
        current = run_states(specs, config.out_root)
        if all(s.state in states for s in current):
            return current
        assert time.monotonic() < deadline, launcher.render_status(config, current)
        time.sleep(0.5)


def launches(config, specs=None):
    return {spec.dirname: json.loads((config.out_root / spec.dirname / "launch.json").read_text())
            for spec in specs or expand(config)}


def test_sweep_runs_as_one_job_array_with_the_local_executors_bytes(slurm_cluster, tmp_path):
    slurm = write(tmp_path, "slurm.toml", out="slurm", trials=6, executor="slurm")
    local = write(tmp_path, "local.toml", out="local", trials=6)
    launched = run_cli("sweep", "launch", slurm, "--runs-per-task", "2")
    assert launched.returncode == 0 and "submitted job array" in launched.stderr, launched.stderr
    config = load_sweep(slurm)
    job_ids = [launch["job_id"] for launch in launches(config).values()]
    assert len({job_id.split("_")[0] for job_id in job_ids}) == 1  # one array
    assert sorted(set(job_ids)) == [f"{job_ids[0].split('_')[0]}_{i}" for i in range(3)]  # 2 runs per task
    assert run_cli("sweep", "launch", local).returncode == 0
    wait_for(config, {DONE_STATE})
    local_config = load_sweep(local)
    for spec in expand(config):
        assert ((config.out_root / spec.dirname / "metrics.jsonl").read_bytes()
                == (local_config.out_root / spec.dirname / "metrics.jsonl").read_bytes()), spec.dirname
    status = run_cli("sweep", "status", slurm).stdout
    assert "done: 6" in status and "executor slurm" in status


def test_failed_run_shows_its_traceback_and_retry_runs_only_it(slurm_cluster, tmp_path, failing_plugin_env):
    env = failing_plugin_env  # the SLURM jobs inherit the submitting process's environment
    path = write(tmp_path, "fail.toml", out="fail", methods=("erm", "boom"), trials=1, executor="slurm")
    assert run_cli("sweep", "launch", path, env=env).returncode == 0
    out = tmp_path / "fail"

    def dirs():
        return {d.name.split("-")[1]: d for d in out.iterdir() if not d.name.startswith(".")}

    deadline = time.monotonic() + 120
    while not ((dirs()["erm"] / "done.json").exists() and "failed: 1" in (
            status := run_cli("sweep", "status", path, env=env).stdout)):
        assert time.monotonic() < deadline, status
        time.sleep(1)
    assert "RuntimeError: boom at step 3" in status and 'raise RuntimeError("boom at step 3")' in status
    assert "[slurm job " in status
    erm_launch = (dirs()["erm"] / "launch.json").read_bytes()
    boom_launch = json.loads((dirs()["boom"] / "launch.json").read_text())
    os.unlink(env["BOOM_FILE"])  # fixed
    retried = run_cli("sweep", "retry", path, env=env)
    assert "retry: 1 run(s)" in retried.stderr, retried.stderr
    assert (dirs()["erm"] / "launch.json").read_bytes() == erm_launch  # the done run is left alone
    assert json.loads((dirs()["boom"] / "launch.json").read_text())["job_id"] != boom_launch["job_id"]
    deadline = time.monotonic() + 120
    while not (dirs()["boom"] / "done.json").exists():
        assert time.monotonic() < deadline, run_cli("sweep", "status", path, env=env).stdout
        time.sleep(0.5)


def preempt(job_id: str, log: Path, timeout: float = 120) -> None:
    """SLURM's pre-emption, SIGTERM then submitit's USR2, as submitit's SlurmJob._interrupt
    sends them, but one after the other: SLURM may deliver two quick signals the other way
    round, and a SIGTERM that lands while the USR2 handler runs kills its `scontrol requeue`."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    subprocess.run(["scancel", job_id, "--signal", "SIGTERM"], check=True)
    deadline = time.monotonic() + timeout
    while "Bypassing signal SIGTERM" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"the job never received SIGTERM: {log}"
        time.sleep(0.05)
    subprocess.run(["scancel", job_id, "--signal", SlurmJobEnvironment.USR_SIG], check=True)


def test_preempted_run_is_requeued_and_resumes_at_its_saved_step(slurm_cluster, tmp_path, blocking_method):
    import submitit

    steps, every = 40, 10
    path = write(tmp_path, "long.toml", out="long", methods=(blocking_method.name,), trials=1, steps=steps,
                 eval_every=every, executor="slurm")
    config = load_sweep(path)
    (spec,) = expand(config)
    run_dir = config.out_root / spec.dirname
    assert launcher.launch(config, stream=io.StringIO()) == 0  # the job inherits the blocking method's variables
    job_id = launches(config)[spec.dirname]["job_id"]
    blocking_method.wait(1)  # mid-run: records 0, 10, 20 written, step 20 checkpointed
    # launch while the run is running: nothing new is submitted
    stream = io.StringIO()
    assert launcher.launch(config, stream=stream) == 0 and "nothing to launch" in stream.getvalue()
    job = submitit.SlurmJob(folder=config.out_root / ".submitit", job_id=job_id)
    timing_before = (run_dir / "timing.jsonl").read_text().splitlines()
    assert steps_of(run_dir) == [0, 10, 20] and len(timing_before) == 3
    preempt(job_id, config.out_root / ".submitit" / f"{job_id}_0_log.err")
    # requeued: the same job goes back to the queue (cred_expire=10: about 11 s)
    deadline = time.monotonic() + 120
    while job.get_info(mode="force").get("State", "").split()[0] not in ("PENDING", "REQUEUED"):
        assert time.monotonic() < deadline and not (run_dir / "done.json").exists(), "not requeued"
        time.sleep(0.2)
    (state,) = run_states([spec], config.out_root)
    assert state.state in (QUEUED, RUNNING) and state.job_id == job_id
    stream = io.StringIO()
    assert launcher.launch(config, stream=stream) == 0 and "nothing to launch" in stream.getvalue()
    blocking_method.release()  # the requeued task trains to the end
    wait_for(config, {DONE_STATE, FAILED}, timeout=120)
    assert (run_dir / "done.json").exists(), (run_dir / "error.json").read_text() if (run_dir / "error.json").exists() else ""
    assert steps_of(run_dir) == list(range(0, steps + 1, every))  # none repeated, none missing
    # it resumed: the records before the interruption were kept as they were written, not redone
    assert (run_dir / "timing.jsonl").read_text().splitlines()[:3] == timing_before
    log = (config.out_root / ".submitit" / f"{job_id}_0_log.out").read_text()
    assert f"resuming {spec.dirname} at step 20" in log and f"at step {steps}" not in log
    assert launches(config)[spec.dirname]["job_id"] == job_id  # no new job was submitted
    jobs = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-j", job_id.split("_")[0]], capture_output=True,
                          text=True).stdout.split()
    assert jobs == [job_id]


def test_a_preempted_task_holding_a_pack_is_requeued_and_each_run_finishes_exactly_once(slurm_cluster, tmp_path,
                                                                                        blocking_method):
    import submitit

    from invbench.sweep.schema import apply_overrides

    steps, every = 40, 10
    path = write(tmp_path, "pack.toml", out="pack", methods=(blocking_method.name,), trials=2, steps=steps,
                 eval_every=every, executor="slurm")
    config = apply_overrides(load_sweep(path), pack_size=2)
    specs = expand(config)
    assert launcher.launch(config, stream=io.StringIO()) == 0
    (job_id,) = {launch["job_id"] for launch in launches(config).values()}  # one task: the pack
    blocking_method.wait(1)  # mid-pack
    preempt(job_id, config.out_root / ".submitit" / f"{job_id}_0_log.err")
    job = submitit.SlurmJob(folder=config.out_root / ".submitit", job_id=job_id)
    deadline = time.monotonic() + 120
    while job.get_info(mode="force").get("State", "").split()[0] not in ("PENDING", "REQUEUED"):
        assert time.monotonic() < deadline, "not requeued"
        time.sleep(0.2)
    blocking_method.release()  # the requeued task trains the pack to the end
    wait_for(config, {DONE_STATE, FAILED}, timeout=150)
    for spec in specs:
        run_dir = config.out_root / spec.dirname
        assert (run_dir / "done.json").exists(), spec.dirname
        assert steps_of(run_dir) == list(range(0, steps + 1, every)), spec.dirname  # none repeated, none missing
    log = (config.out_root / ".submitit" / f"{job_id}_0_log.out").read_text()
    assert "resuming" in log  # the requeued task resumed from a checkpoint
    jobs = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-j", job_id.split("_")[0]], capture_output=True,
                          text=True).stdout.split()
    assert jobs == [job_id]
