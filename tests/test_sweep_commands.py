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



def test_an_unwritable_out_is_one_line_exit_2_before_anything_starts(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path, _ = write(tmp_path, 'methods = ["erm"]\nhparams = { batch_size = 0 }\nsteps = 1\n' + DATASET)
    message = f"invbench: error: cannot write the runs to {blocker / 'runs'} (--out): {blocker} is a file, not a folder"
    for args in (["sweep", "launch", path, "--executor", "inline"], ["run", "-d", "linear_sem", "-m", "erm"]):
        result = cli(*args, "--out", blocker / "runs")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == message and "Traceback" not in result.stderr


def test_an_unwritable_folder_is_named(tmp_path):
    import os

    import pytest

    from invbench.errors import ConfigError
    from invbench.sweep.preflight import check_output

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=f"{locked} is not writable; choose another --out"):
        check_output(locked / "runs")
    check_output(tmp_path / "new" / "runs")  # folders that do not exist yet are fine


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
