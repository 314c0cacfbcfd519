import json
from pathlib import Path

from invbench.runner import METRICS


def test_list_shows_methods_and_datasets(cli):
    out = cli("list")
    assert out.returncode == 0, out.stderr
    assert "erm:" in out.stdout and "linear_sem:" in out.stdout
    methods_only = cli("list", "methods")
    assert "linear_sem" not in methods_only.stdout
    models = cli("list", "models")  # the --model help points here
    assert models.returncode == 0, models.stderr
    assert "mlp_grayscale:" in models.stdout and "reads hidden_dim" in models.stdout and "erm:" not in models.stdout


def test_unknown_method_exits_2_and_names_the_close_match(cli, tmp_path):
    out = cli("run", "--dataset", "linear_sem", "--method", "ermm", "--out", tmp_path)
    assert out.returncode == 2
    assert "'erm'" in out.stderr and "unknown method 'ermm'" in out.stderr
    assert not any(tmp_path.iterdir())


def test_bad_set_value_exits_2(cli, tmp_path):
    out = cli("run", "-d", "linear_sem", "-m", "erm", "--set", "lr=abc", "--out", tmp_path)
    assert out.returncode == 2 and "lr='abc'" in out.stderr
    out = cli("run", "-d", "linear_sem", "-m", "erm", "--set", "lr", "--out", tmp_path)
    assert out.returncode == 2 and "name=value" in out.stderr


def test_usage_error_exits_2(cli):
    assert cli("run", "--dataset", "linear_sem").returncode == 2


def test_run_twice_writes_identical_metric_lines_and_collect_reads_them(cli, tmp_path):
    args = ["run", "-d", "linear_sem", "-m", "erm", "--steps", "50", "--eval-every", "25", "-o", "n_per_env=300"]
    first = cli(*args, "--out", tmp_path / "a")
    second = cli(*args, "--out", tmp_path / "b")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    dir_a, dir_b = Path(first.stdout.strip()), Path(second.stdout.strip())
    assert dir_a.name == dir_b.name
    assert (dir_a / METRICS).read_bytes() == (dir_b / METRICS).read_bytes()
    table = cli("collect", tmp_path / "a", "--selection", "last")  # linear_sem has no val split
    assert table.returncode == 0, table.stderr
    assert "### linear_sem, source synthetic (n=900), test environment sigma=5, test MSE" in table.stdout
    last = json.loads((dir_a / METRICS).read_text().splitlines()[-1])
    assert f"| erm | 1 | {last['envs']['sigma=5']['train']['mse']:.4g} |" in table.stdout


def test_input_errors_that_only_the_data_tells_stop_run_before_it_starts(tmp_path, monkeypatch, capsys):
    """One line, exit 2, and no run directory: not a failed run with an error.json."""
    import warnings

    from invbench.cli import main

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it
    monkeypatch.setenv("INVBENCH_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "runs"
    sem = ["-d", "linear_sem", "-o", "n_per_env=100"]
    cases = [
        ([*sem, "--set", "batch_size=500"], "linear_sem with erm (draw 0): environment 0 (sigma=0.2) has 100 training "
                                            "examples, fewer than batch_size=500"),
        ([*sem, "--model", "mlp_grayscale"], "linear_sem: model 'mlp_grayscale' needs "
                                             "(channels, ...) inputs; the data have inputs of shape (10,)"),
        ([*sem, "--model", "cnn"], "linear_sem: model 'cnn' needs (channels, height, width) inputs"),
        ([*sem, "--device", "tpu"], "--device 'tpu' is not a device; allowed: auto, cpu, cuda or cuda:N"),
        (["-d", "cmnist_irm", "--data-dir", str(empty)], f"cmnist_irm: the data directory {empty} cannot provide mnist"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(([*sem, "--device", "cuda"], "--device 'cuda' was asked for but CUDA is not available"))
    for extra, message in cases:
        code = main(["run", "-m", "erm", "--steps", "1", *extra, "--out", str(out)])
        stderr = capsys.readouterr().err
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, (extra, stderr)
        assert not out.exists(), extra


FAILING_METHOD = '''
from invbench.registry import METHODS
from invbench.methods.erm import ERM


@METHODS.register("failing")
class Failing(ERM):
    """Raises at step 2."""

    def objective(self, model, batches, step):
        if step == 2:
            raise RuntimeError("planted failure")
        return super().objective(model, batches, step)


@METHODS.register("bad_input")
class BadInput(ERM):
    """Finds bad input at step 2, too late for any check before the run."""

    def objective(self, model, batches, step):
        if step == 2:
            from invbench.errors import ConfigError

            raise ConfigError("planted input error")
        return super().objective(model, batches, step)
'''


def test_failing_run_exits_1_with_its_error_recorded(cli, tmp_path):
    (tmp_path / "failing_method.py").write_text(FAILING_METHOD)
    env = {"PYTHONPATH": str(tmp_path), "INVBENCH_PLUGINS": "failing_method"}
    out = cli("run", "-d", "linear_sem", "-m", "failing", "--steps", "5", "--out", tmp_path / "runs", env=env)
    assert out.returncode == 1, out.stderr
    assert "planted failure" in out.stderr
    error = json.loads(next((tmp_path / "runs").glob("*/error.json")).read_text())
    assert error["type"] == "RuntimeError" and "Traceback" in error["traceback"]
    # bad input found only inside the run is still an input error (exit 2), and recorded
    out = cli("run", "-d", "linear_sem", "-m", "bad_input", "--steps", "5", "--out", tmp_path / "late", env=env)
    assert out.returncode == 2 and "planted input error" in out.stderr, out.stderr
    assert "planted input error" in json.loads(next((tmp_path / "late").glob("*/error.json")).read_text())["message"]


def test_warnings_are_shown_once_without_source_lines(cli, tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text(f'name = "w"\nout = "{tmp_path / "out"}"\nmethods = ["irm"]\ntrials = 3\nsteps = 60\n'
                     '[[datasets]]\nname = "linear_sem"\noptions = { n_per_env = 300 }\n')
    out = cli("sweep", "status", sweep)
    assert out.returncode == 0, out.stderr
    warned = [line for line in out.stderr.splitlines() if "anneal_iters" in line]
    assert len(warned) == 1 and warned[0].startswith("invbench: warning: "), out.stderr
    assert "make_spec" not in out.stderr and ".py:" not in out.stderr, out.stderr


def test_collect_of_a_folder_without_runs_is_an_input_error(cli, tmp_path):
    out = cli("collect", tmp_path, "--save-baseline", tmp_path / "base.csv")
    assert out.returncode == 2 and "no run directories under" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "base.csv").exists()


def test_version(capsys):
    import importlib.metadata

    import pytest

    from invbench.cli import main as cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"invbench {importlib.metadata.version('invbench')}\n"


def test_run_ends_with_its_final_scores_and_a_finished_run_says_it_was_already_done(tmp_path, capsys):
    from invbench.cli import main as cli_main

    args = ["run", "-d", "linear_sem", "-m", "erm", "--steps", "20", "--eval-every", "10", "-o", "n_per_env=200",
            "--out", str(tmp_path)]
    assert cli_main(args) == 0
    out, err = capsys.readouterr()
    run_dir = Path(out.strip())  # stdout stays the run directory alone, for scripts
    last = json.loads((run_dir / METRICS).read_text().splitlines()[-1])
    assert last["step"] == 20
    table = err[err.index("final scores"):].splitlines()
    assert table[0] == "final scores at step 20 (synthetic (n=600)), MSE (lower is better):"
    assert table[1].split() == ["environment", "role", "train", "split"]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:5]}
    assert rows == {env: ["test" if env == "sigma=5" else "train", f"{last['envs'][env]['train']['mse']:.4g}"]
                    for env in ("sigma=0.2", "sigma=2", "sigma=5")}
    assert table[5].strip() == (f"causal_error {last['extra']['causal_error']:.4g}, "
                                f"noncausal_error {last['extra']['noncausal_error']:.4g}")
    assert err.rstrip().endswith(table[-1])  # the scores end the run's output
    # again: nothing is trained, and it says so, with the same scores
    assert cli_main(args) == 0
    out_again, err_again = capsys.readouterr()
    assert out_again == out and "step " not in err_again.split("final scores")[0]
    assert f"{run_dir.name} was already done (its done.json is there); nothing was trained" in err_again
    assert err_again[err_again.index("final scores"):] == err[err.index("final scores"):]
    assert cli_main([*args, "--quiet"]) == 0 and capsys.readouterr() == (out, "")
