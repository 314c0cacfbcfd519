"""`invbench sweep ...` and `invbench demo` at the command line: errors before anything is
submitted, and the demo's wiring through the launcher."""

import argparse

from invbench.commands import demo
from invbench.sweep import launcher


def write(tmp_path, text):
    path = tmp_path / "sweep.toml"
    out = tmp_path / "out"
    path.write_text(f'name = "t"\nout = "{out}"\n' + text)
    return path, out


DATASET = '\n[[datasets]]\nname = "linear_sem"\noptions = { n_per_env = 50 }\n'


def test_unknown_key_exits_2_and_creates_nothing(cli, tmp_path):
    path, out = write(tmp_path, 'methods = ["erm"]\ntrails = 3\n' + DATASET)
    result = cli("sweep", "launch", path)
    assert result.returncode == 2
    assert "unknown key 'trails'. Did you mean 'trials'?" in result.stderr
    assert not out.exists()


def test_unknown_method_and_bad_value_exit_2_and_create_nothing(cli, tmp_path):
    path, out = write(tmp_path, 'methods = ["ermm"]\n' + DATASET)
    result = cli("sweep", "launch", path)
    assert result.returncode == 2 and "unknown method 'ermm'" in result.stderr and not out.exists()
    path, out = write(tmp_path, 'methods = ["erm"]\ntrials = -1\n' + DATASET)
    result = cli("sweep", "launch", path)
    assert result.returncode == 2 and "trials must be an integer >= 1; got -1" in result.stderr
    assert not out.exists()


def test_environment_smaller_than_the_batch_exits_2_before_anything_is_submitted(cli, tmp_path):
    path, out = write(tmp_path, 'methods = ["erm"]\nhparams = { batch_size = 64 }\n' + DATASET)
    result = cli("sweep", "launch", path, "--executor", "slurm")
    assert result.returncode == 2
    assert "has 50 training examples, fewer than batch_size=64" in result.stderr
    assert not out.exists()


def test_status_of_a_sweep_never_launched(cli, tmp_path):
    path, out = write(tmp_path, 'methods = ["erm"]\ntrials = 2\nhparams = { batch_size = 0 }\n' + DATASET)
    result = cli("sweep", "status", path)
    assert result.returncode == 0
    assert "2 runs" in result.stdout and "not launched: 2" in result.stdout and "ETA ?" in result.stdout
    assert not out.exists()


def test_demo_runs_the_shipped_demo_sweep_then_prints_the_leaderboard_and_writes_the_report(tmp_path, monkeypatch, capsys):
    seen = {}
    real_launch = launcher.launch

    def spying_launch(config, **kwargs):
        seen["config"] = config
        return real_launch(config, **kwargs)

    monkeypatch.setattr(launcher, "launch", spying_launch)
    assert demo.main(argparse.Namespace(out=str(tmp_path / "demo"), workers=None)) == 0
    config = seen["config"]
    assert config.name == "demo" and config.executor.kind == "local" and config.out == str(tmp_path / "demo")
    assert config.source.endswith("benchmark/sweeps/demo.toml")
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "trials" not in line}
    assert set(rows) == {"erm", "irm", "vrex", "groupdro"}
    assert all("| 3 |" in row for row in rows.values())  # three trials each
    # the point of the demo: ERM leans on the effect features and has the worst test MSE
    test_mse = {method: float(row.split("|")[3].split("±")[0]) for method, row in rows.items()}
    assert max(test_mse, key=test_mse.get) == "erm", test_mse
    assert (tmp_path / "demo" / "report" / "report.html").stat().st_size > 10_000
    assert list((tmp_path / "demo" / "report" / "plots").glob("*.png"))



# The launch's flags are kept with its runs ------------------------------------------------

def test_status_retry_and_cancel_remember_the_launch_flags(tmp_path, capsys, invbench):
    path, default_out = write(tmp_path, 'methods = ["erm"]\nhparams = { batch_size = 0 }\n[executor]\nkind = "inline"\n'
                              + DATASET)
    out = tmp_path / "elsewhere"
    code, _, err = invbench("sweep", "launch", path, "--out", out, "--trials", "2", "--steps", "3")
    assert code == 0, err
    for args in ((path, "--out", out), (out,)):  # the sweep file with --out, or the folder alone
        code, report, err = invbench("sweep", "status", *args)
        assert code == 0 and err == ""
        assert f"sweep t ({out}): 2 runs" in report and "done: 2" in report, report
    code, report, _ = invbench("sweep", "retry", out)
    assert code == 0
    assert "nothing to cancel" in invbench("sweep", "cancel", out)[1]
    # a flag given again wins, with a note when it addresses other runs than the launch's
    code, report, err = invbench("sweep", "status", out, "--trials", "1")
    assert code == 0 and "1 runs" in report and "done: 1" in report
    assert err == ("invbench: note: --trials 1 differs from the --trials 2 the sweep was launched with: "
                   "this addresses other runs than the launch's\n")
    assert not default_out.exists()  # nothing looked for the runs in the file's own out


def test_the_next_launch_of_the_file_keeps_the_launch_flags(tmp_path, capsys, invbench):
    path, out = write(tmp_path, 'methods = ["erm"]\nhparams = { batch_size = 0 }\n[executor]\nkind = "inline"\n'
                      + DATASET)
    assert invbench("sweep", "launch", path, "--trials", "2", "--steps", "3")[0] == 0
    code, _, err = invbench("sweep", "launch", path)
    assert code == 0 and "2 runs; done 2" in err and "nothing to launch" in err
    assert "2 runs" in invbench("sweep", "status", path)[1]


def test_a_folder_without_a_launched_sweep_is_a_one_line_error(tmp_path, capsys, invbench):
    folder = tmp_path / "runs"
    (folder / ".invbench" / "sweeps").mkdir(parents=True)
    code, out, err = invbench("sweep", "status", folder)
    assert code == 2 and out == ""
    assert err == (f"invbench: error: {folder} holds the launches of 0 sweeps (none); name one: "
                   f"`invbench sweep status FILE --out {folder}`\n")


def test_cancel_records_the_cancellation_and_status_reads_cancelled_without_an_eta(tmp_path, capsys, invbench):
    import socket
    import subprocess
    import sys
    import time

    from invbench.sweep.expansion import expand
    from invbench.sweep.schema import load_sweep
    from invbench.sweep.launches import write_launch
    from invbench.sweep.state import CANCELLED, run_states

    path, out = write(tmp_path, 'methods = ["erm"]\ntrials = 2\nhparams = { batch_size = 0 }\n' + DATASET)
    lock, ready = tmp_path / "launcher.lock", tmp_path / "ready"
    # a stand-in for a live local launcher: it holds its lock until a signal ends it
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "open(sys.argv[2], 'w').close()\n"
                               "time.sleep(600)\n", str(lock), str(ready)])
    try:
        while not ready.exists():
            assert holder.poll() is None
            time.sleep(0.01)  # polling for the file: the event, not a timing window
        config = load_sweep(path)
        for spec in expand(config):
            (out / spec.dirname).mkdir(parents=True)
            write_launch(out / spec.dirname, "local", f"h:{holder.pid}:1", lock=str(lock), pid=holder.pid,
                         host=socket.gethostname())
        assert "queued: 2" in invbench("sweep", "status", path)[1]
        code, said, _ = invbench("sweep", "cancel", path)
        assert code == 0
        assert said.splitlines() == [f"sent SIGTERM to launcher pid {holder.pid}",
                                     "2 run(s) cancelled; `invbench sweep launch` resumes them"]
        assert holder.wait(timeout=60) == -15  # the event: SIGTERM ended it
    finally:
        if holder.poll() is None:
            holder.kill()
    code, report, _ = invbench("sweep", "status", path)
    assert code == 0 and "cancelled: 2" in report and "stale: 0" in report and "ETA" not in report
    assert "0/2 done (0%); 2 cancelled: `invbench sweep launch` resumes them" in report
    assert {s.state for s in run_states(expand(config), out)} == {CANCELLED}
    assert CANCELLED in launcher.LAUNCHABLE["launch"]


def test_cancel_and_status_list_slurm_job_ids_in_numeric_order(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from invbench.sweep.executors import slurm
    from invbench.sweep.state import QUEUED, RunState

    calls = []
    monkeypatch.setattr(slurm.subprocess, "run", lambda args, **kwargs: calls.append(args))
    ids = ["7_10", "7_2", "7_1", "12_0"]
    messages = slurm.SlurmExecutor.cancel([{"job_id": job_id} for job_id in ids])
    assert messages == ["scancel 7_1", "scancel 7_2", "scancel 7_10", "scancel 12_0"]
    assert calls == [["scancel", "7_1", "7_2", "7_10", "12_0"]]
    spec = SimpleNamespace(dataset="d", method="m", dirname="r")
    states = [RunState(spec, tmp_path, QUEUED, executor="slurm", job_id=job_id) for job_id in ids]
    config = SimpleNamespace(name="t", out_root=tmp_path, executor=SimpleNamespace(kind="slurm"))
    assert "active jobs: slurm 7_1, slurm 7_2, slurm 7_10, slurm 12_0" in launcher.render_status(config, states)


def test_a_cancelled_slurm_job_reads_cancelled_not_stale(tmp_path):
    from types import SimpleNamespace

    from invbench.sweep.state import CANCELLED, STALE, JobState, classify

    spec = SimpleNamespace(dirname="r", run_id="r-id")
    (tmp_path / "r").mkdir()
    gone = {("slurm", "7_3"): JobState(alive=False, reason="SLURM job 7_3 CANCELLED")}
    launch = {"executor": "slurm", "job_id": "7_3", "time": 1.0}
    assert classify(spec, tmp_path / "r", launch, gone).state == STALE  # cancelled by someone else: stale
    marked = classify(spec, tmp_path / "r", {**launch, "cancelled": 2.0}, gone)
    assert marked.state == CANCELLED and marked.reason.startswith("cancelled by `invbench sweep cancel`")


def test_an_unwritable_out_is_one_line_exit_2_before_anything_starts(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path, _ = write(tmp_path, 'methods = ["erm"]\nhparams = { batch_size = 0 }\nsteps = 1\n' + DATASET)
    message = f"invbench: error: cannot write the runs to {blocker / 'runs'} (--out): {blocker} is a file, not a folder"
    for args in (["sweep", "launch", path, "--executor", "inline"], ["run", "-d", "linear_sem", "-m", "erm"]):
        result = cli(*args, "--out", blocker / "runs")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == message and "Traceback" not in result.stderr


def test_an_out_that_even_root_cannot_write_is_one_line_exit_2(cli, tmp_path):
    # os.access says yes to root everywhere; /proc refuses root a new folder all the same
    path, _ = write(tmp_path, 'methods = ["erm"]\nhparams = { batch_size = 0 }\nsteps = 1\n' + DATASET)
    message = ("invbench: error: cannot write the runs to /proc/x (--out): cannot create /proc/x "
               "(No such file or directory); choose another --out")
    for args in (["sweep", "launch", path, "--executor", "inline"], ["run", "-d", "linear_sem", "-m", "erm"]):
        result = cli(*args, "--out", "/proc/x")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == message and "Traceback" not in result.stderr


def test_an_unwritable_folder_is_named_and_a_writable_one_left_as_it_was(tmp_path):
    import os

    import pytest

    from invbench.errors import ConfigError
    from invbench.sweep.preflight import check_output

    check_output(tmp_path / "new" / "runs")  # folders that do not exist yet are fine
    assert list(tmp_path.iterdir()) == []  # and the check leaves nothing behind
    if os.geteuid() == 0:
        pytest.skip("root writes into a folder of mode 0500; /proc stands in for it above")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=f"cannot create {locked / 'runs'} \\(Permission denied\\); "
                                          "choose another --out"):
        check_output(locked / "runs")
    with pytest.raises(ConfigError, match=f"cannot create a file in {locked} \\(Permission denied\\)"):
        check_output(locked)


def test_a_refused_slurm_submission_is_one_line_exit_2_with_nothing_submitted(cli, tmp_path):
    from fake_slurm import fake_slurm

    refusal = ("sbatch: error: invalid partition specified: nope\n"
               "sbatch: error: Batch job submission failed: Invalid partition name specified")
    env = fake_slurm(tmp_path / "bin", refuse=refusal)
    path, out = write(tmp_path, 'methods = ["erm"]\ntrials = 2\nhparams = { batch_size = 0 }\n' + DATASET)
    result = cli("sweep", "launch", path, "--executor", "slurm", "--slurm", "partition=nope", env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "invbench: error: sbatch refused the job array of 2 run(s), nothing was submitted: sbatch: error: invalid "
        "partition specified: nope sbatch: error: Batch job submission failed: Invalid partition name specified")
    assert not list(out.glob("*/launch.json"))
    status = cli("sweep", "status", path, env=env)
    assert "not launched: 2" in status.stdout, status.stdout + status.stderr


def test_a_failing_scancel_is_one_line_naming_the_jobs_exit_1(cli, tmp_path):
    from fake_slurm import fake_slurm

    from invbench.sweep.expansion import expand
    from invbench.sweep.launches import write_launch
    from invbench.sweep.schema import load_sweep

    path, out = write(tmp_path, 'methods = ["erm"]\ntrials = 2\nhparams = { batch_size = 0 }\n' + DATASET)
    ids = ["4242_1", "4242_0"]
    for spec, job_id in zip(expand(load_sweep(path)), ids):
        (out / spec.dirname).mkdir(parents=True)
        write_launch(out / spec.dirname, "slurm", job_id, folder=str(out / ".submitit"))
    env = fake_slurm(tmp_path / "bin", sacct_lines="".join(f"{job_id}|PENDING|\n" for job_id in ids),
                     scancel_refuses="scancel: error: Kill job error on job id 4242_0: Access/permission denied")
    result = cli("sweep", "cancel", path, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == ("invbench: error: scancel could not cancel SLURM job(s) 4242_0, 4242_1: scancel: error: "
                             "Kill job error on job id 4242_0: Access/permission denied\n")


def test_a_missing_scancel_is_a_cancel_error_naming_the_jobs(tmp_path, monkeypatch):
    import pytest

    from invbench.sweep.executors.base import CancelError
    from invbench.sweep.executors.slurm import SlurmExecutor

    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without scancel
    with pytest.raises(CancelError, match=r"^cannot cancel SLURM job\(s\) 7_2, 7_10: scancel is not on PATH"):
        SlurmExecutor.cancel([{"job_id": "7_10"}, {"job_id": "7_2"}])


def test_launch_and_run_rewrite_the_lost_spec_json_of_a_done_run(tmp_path, capsys, invbench):
    import json

    from invbench.sweep.expansion import expand
    from invbench.sweep.schema import load_sweep

    path, out = write(tmp_path, 'methods = ["erm"]\ntrials = 2\nsteps = 2\neval_every = 2\nhparams = { batch_size = 0 }\n'
                      '[executor]\nkind = "inline"\n' + DATASET)
    assert invbench("sweep", "launch", path)[0] == 0
    specs = expand(load_sweep(path))
    deleted, garbled = (out / spec.dirname for spec in specs)
    (deleted / "spec.json").unlink()
    (garbled / "spec.json").write_text("{not json")
    code, _, err = invbench("collect", out, "-s", "last")
    assert deleted.name in err and garbled.name in err, err  # what the bug looked like: both left out
    code, _, err = invbench("sweep", "launch", path)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("invbench: note:")]
    assert len(notes) == 1 and notes[0].startswith(
        f"invbench: note: rewrote the spec.json of 2 done run(s) from the sweep, since their done.json is valid "
        f"for it: {deleted.name} (missing); {garbled.name} (not valid JSON, set aside as spec.json.broken-"), err
    for spec in specs:
        assert json.loads((out / spec.dirname / "spec.json").read_text()) == json.loads(json.dumps(spec.to_dict()))
    assert [p.read_text() for p in garbled.glob("spec.json.broken-*")] == ["{not json"]  # kept, not deleted
    code, _, err = invbench("collect", out, "-s", "last")
    assert code == 0 and "warning" not in err and "broken" not in err, err
    code, _, err = invbench("sweep", "launch", path)
    assert code == 0 and "invbench: note" not in err  # nothing left to rewrite

    args = ["run", "-d", "linear_sem", "-m", "erm", "-o", "n_per_env=50", "--steps", "2", "--out", tmp_path / "one"]
    code, run_dir, _ = invbench(*args)
    assert code == 0
    spec_json = tmp_path / "one" / run_dir.strip() / "spec.json"
    written = spec_json.read_text()
    spec_json.unlink()
    code, _, err = invbench(*args)
    assert code == 0 and spec_json.read_text() == written
    assert (f"invbench: note: {run_dir.strip().split('/')[-1]}: spec.json was missing; rewritten from this spec, "
            "since the run's done.json is valid for it") in err, err
