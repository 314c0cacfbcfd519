"""`invbench sweep ...` and `invbench demo` at the command line: errors before anything is
submitted, and the demo's wiring through the launcher."""

import argparse

from benchmark.commands import collect, demo
from benchmark.sweep import launcher


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


def test_demo_runs_the_shipped_demo_sweep_with_the_local_executor(tmp_path, monkeypatch):
    seen = {}

    def fake_launch(config, **kwargs):
        seen["config"] = config
        return 0

    monkeypatch.setattr(launcher, "launch", fake_launch)
    monkeypatch.setattr(collect, "main", lambda args: seen.setdefault("collect", args) and 0)
    assert demo.main(argparse.Namespace(out=str(tmp_path / "demo"), workers=None)) == 0
    config = seen["config"]
    assert config.name == "demo" and config.executor.kind == "local" and config.out == str(tmp_path / "demo")
    assert config.source.endswith("benchmark/sweeps/demo.toml")
    # then the leaderboard of what it ran, the final model of each run (the SEM protocol)
    assert seen["collect"].dir == str(tmp_path / "demo") and seen["collect"].selection == "last"
