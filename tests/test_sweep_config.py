"""The sweep file: schema errors for people, deterministic expansion, overrides, and the
shipped example files."""


import pytest

from invbench.errors import ConfigError, UnknownNameError
from invbench.registry import DATASETS, METHODS
from invbench.sweep.config import apply_overrides, expand, load_sweep, parse_sweep, preflight, shipped_sweeps

BASE = {"methods": ["erm"], "datasets": [{"name": "linear_sem", "options": {"n_per_env": 50}}],
        "hparams": {"batch_size": 0}}


def sweep(**changes):
    return parse_sweep({**BASE, **changes})


def test_expansion_counts_and_order_are_fixed():
    config = sweep(trials=3, hparam_draws=2, datasets=[{"name": "linear_sem", "test_envs": "each"}])
    specs = expand(config)
    # 3 test environments x 1 method x 2 draws x 3 trials
    assert len(specs) == 18
    assert [s.run_id for s in specs] == [s.run_id for s in expand(config)]
    assert [(s.test_envs, s.hparams_seed, s.trial) for s in specs[:4]] == [((0,), 0, 0), ((0,), 0, 1), ((0,), 0, 2),
                                                                         ((0,), 1, 0)]
    assert {s.test_envs for s in specs} == {(0,), (1,), (2,)}


def test_draw_zero_is_the_defaults_and_the_file_settings_reach_the_spec():
    config = sweep(steps=7, eval_every=3, holdout_fraction=0.2, hparams={"batch_size": 0, "lr": 0.05})
    (spec,) = expand(config)
    assert spec.hparams_seed == 0 and spec.hparams["lr"] == 0.05 and spec.hparams["batch_size"] == 0
    assert (spec.steps, spec.eval_every, spec.holdout_fraction) == (7, 3, 0.2)
    assert spec.dataset_options["n_per_env"] == 50 and spec.test_envs == (2,)  # the dataset's default
    assert spec.device == "cpu"


def test_per_dataset_values_win_over_the_sweep_values():
    config = sweep(steps=7, datasets=[{"name": "linear_sem", "steps": 9, "test_envs": [[0], [1]]}])
    assert [(s.steps, s.test_envs) for s in expand(config)] == [(9, (0,)), (9, (1,))]


def test_unknown_key_is_named_with_its_close_match_and_the_allowed_keys():
    with pytest.raises(ConfigError) as info:
        sweep(trails=3)
    message = str(info.value)
    assert "unknown key 'trails'" in message and "Did you mean 'trials'?" in message
    assert "hparam_draws" in message and "executor" in message  # the allowed keys are listed


def test_unknown_key_in_nested_tables_names_the_table():
    with pytest.raises(ConfigError, match=r"\[executor.slurm\].*unknown key 'partion'.*'partition'"):
        sweep(executor={"kind": "slurm", "slurm": {"partion": "gpu"}})
    with pytest.raises(ConfigError, match=r"\[\[datasets\]\] #1.*unknown key 'option'.*'options'"):
        sweep(datasets=[{"name": "linear_sem", "option": {}}])


@pytest.mark.parametrize("changes, message", [
    ({"trials": 0}, "trials must be an integer >= 1; got 0"),
    ({"trials": "3"}, "trials must be an integer; got '3'"),
    ({"trials": True}, "trials must be an integer; got True"),
    ({"methods": "erm"}, "methods must be a non-empty list of strings"),
    ({"methods": ["erm", "erm"]}, "lists a name twice"),
    ({"holdout_fraction": 1.0}, r"holdout_fraction must be a number in \[0, 1\)"),
    ({"executor": {"kind": "cloud"}}, "kind = 'cloud' is not an executor; allowed: inline, local, slurm"),
    ({"executor": {"workers": -1}}, "workers must be an integer >= 0"),
    ({"datasets": [{"name": "linear_sem", "test_envs": [1]}]}, "test_envs must be \"each\" or a list of lists"),
    ({"datasets": []}, "one or more"),
    ({"method_hparams": {"irm": {"penalty_weight": 1.0}}}, "not in methods"),
])
def test_bad_values_say_what_is_allowed(changes, message):
    with pytest.raises(ConfigError, match=message):
        sweep(**changes)


def test_unknown_names_and_bad_options_fail_at_expansion():
    with pytest.raises(UnknownNameError, match="unknown method 'ermm'.*Did you mean 'erm'"):
        expand(sweep(methods=["ermm"]))
    with pytest.raises(UnknownNameError, match="unknown dataset"):
        expand(sweep(datasets=[{"name": "linear_semm"}]))
    with pytest.raises(ConfigError, match="n_per_env"):
        expand(sweep(datasets=[{"name": "linear_sem", "options": {"n_per_env": -5}}]))
    with pytest.raises(ConfigError, match="unknown hyperparameter 'lrr'.*did you mean 'lr'"):
        expand(sweep(hparams={"lrr": 0.1}))
    with pytest.raises(ConfigError, match="test environment"):
        expand(sweep(datasets=[{"name": "linear_sem", "test_envs": [[7]]}]))


def test_environment_smaller_than_the_batch_is_caught_before_launch():
    # linear_sem with n_per_env=50: each training environment holds 50 examples
    specs = expand(sweep(hparams={"batch_size": 64}))
    with pytest.raises(ConfigError, match="has 50 training examples, fewer than batch_size=64"):
        preflight(specs)
    preflight(expand(sweep(hparams={"batch_size": 50})))  # exactly one batch is fine


def test_command_line_overrides_win_over_the_file():
    config = sweep(trials=3, steps=5, executor={"kind": "local", "workers": 2})
    changed = apply_overrides(config, steps=11, trials=1, executor="slurm", workers=4, runs_per_task=3,
                              out="elsewhere", slurm={"partition": "gpu", "time_min": 30})
    assert (changed.steps, changed.trials, changed.out) == (11, 1, "elsewhere")
    assert (changed.executor.kind, changed.executor.workers, changed.executor.runs_per_task) == ("slurm", 4, 3)
    assert (changed.executor.slurm.partition, changed.executor.slurm.time_min) == ("gpu", 30)
    assert apply_overrides(config) == config  # nothing given, nothing changed
    with pytest.raises(ConfigError, match="--steps must be >= 1"):
        apply_overrides(config, steps=0)
    with pytest.raises(ConfigError, match=r"--slurm.*unknown key 'partitoin'"):
        apply_overrides(config, slurm={"partitoin": "gpu"})


def test_a_bad_device_is_refused_before_any_run_starts(tmp_path):
    """Not a failed error.json in every run directory: the sweep is refused whole."""
    with pytest.raises(ConfigError, match="device 'tpu' is not a device; allowed: auto, cpu, cuda, cuda:N"):
        sweep(device="tpu")
    with pytest.raises(ConfigError, match="--device 'cuda:x' is not a device"):
        apply_overrides(sweep(), device="cuda:x")
    assert apply_overrides(sweep(), device="cuda:1").device == "cuda:1"
    import torch

    from invbench.sweep import launcher

    if not torch.cuda.is_available():
        config = apply_overrides(sweep(), device="cuda", executor="inline", out=str(tmp_path / "out"))
        with pytest.raises(ConfigError, match="CUDA is not available"):
            launcher.launch(config)
        assert not (tmp_path / "out").exists()


def test_missing_file_lists_the_shipped_sweeps(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*demo"):
        load_sweep(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("methods = [erm")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_sweep(bad)


EXPECTED_FILES = {"demo", "cmnist_irm", "cmnist_domainbed", "cfmnist_irm", "linear_sem", "linear_unit_tests"}


def test_example_sweep_files_are_shipped():
    assert EXPECTED_FILES <= set(shipped_sweeps())


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_shipped_sweep_files_are_valid(name):
    config = load_sweep(shipped_sweeps()[name])
    missing = [d.name for d in config.datasets if d.name not in DATASETS] + [m for m in config.methods if m not in METHODS]
    if missing:
        pytest.skip(f"not registered yet: {missing}")
    # a slice (2 draws, 1 trial) validates every dataset, option, method and preset quickly
    specs = expand(apply_overrides(config, trials=1, hparam_draws=min(config.hparam_draws, 2)))
    assert specs and len({s.run_id for s in specs}) == len(specs)
