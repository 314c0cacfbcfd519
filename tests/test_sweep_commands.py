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

