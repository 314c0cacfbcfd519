import dataclasses
import json
import subprocess
import sys

import pytest

from invbench.errors import ConfigError, UnknownNameError
from invbench.spec import RunSpec, make_spec


def test_same_spec_gives_the_same_id_in_a_new_process():
    spec = make_spec("linear_sem", "erm", trial=3, hparams_seed=2)
    code = ("from invbench.spec import make_spec; "
            "print(make_spec('linear_sem', 'erm', trial=3, hparams_seed=2).run_id)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == spec.run_id
    # and the id is a hash of content, not of object identity or dict order
    assert len(spec.run_id) == 64


def test_changed_hyperparameter_gives_a_new_id():
    base = make_spec("linear_sem", "erm")
    changed = make_spec("linear_sem", "erm", overrides={"lr": 0.02})
    assert base.run_id != changed.run_id
    assert changed.hparams["lr"] == 0.02


def test_each_identity_field_changes_the_id():
    base = make_spec("linear_sem", "erm")
    variants = [
        make_spec("linear_sem", "erm", trial=1),
        make_spec("linear_sem", "erm", hparams_seed=1),
        make_spec("linear_sem", "erm", steps=10),
        make_spec("linear_sem", "erm", eval_every=7),
        make_spec("linear_sem", "erm", test_envs=[1]),
        make_spec("linear_sem", "erm", dataset_options={"scramble": "true"}),
        make_spec("linear_sem", "erm", holdout_fraction=0.2),
        make_spec("linear_sem", "erm", model="linear"),
    ]
    ids = {base.run_id, *(v.run_id for v in variants)}
    assert len(ids) == len(variants) + 1


def test_data_directory_and_device_do_not_change_the_id():
    base = make_spec("linear_sem", "erm")
    moved = make_spec("linear_sem", "erm", data_dir="/somewhere/else", device="cpu")
    assert moved.run_id == base.run_id
    assert moved.dirname == base.dirname
    assert "data_dir" not in base.canonical_json() and "device" not in base.canonical_json()


def test_run_directory_name_is_readable():
    spec = make_spec("linear_sem", "erm", trial=4, hparams_seed=7, test_envs=[2])
    assert spec.dirname == f"linear_sem-erm-test2-trial4-hp7-{spec.run_id[:10]}"


def test_spec_round_trips_through_json():
    spec = make_spec("linear_sem", "erm", dataset_options={"env_sigmas": "0.5,1,3"}, data_dir="/d")
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.run_id == spec.run_id


def test_spec_is_frozen():
    spec = make_spec("linear_sem", "erm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 3


def test_hyperparameter_draws_are_seeded_per_name_and_zero_is_defaults():
    default = make_spec("linear_sem", "erm", hparams_seed=0)
    assert default.hparams["lr"] == 0.01  # the dataset's default
    draw = make_spec("linear_sem", "erm", hparams_seed=5)
    assert draw.hparams["lr"] != 0.01
    assert 10 ** -2.5 <= draw.hparams["lr"] <= 10 ** -1.5  # the protocol's search, around its default
    # the same draw, asked again, is the same
    assert make_spec("linear_sem", "erm", hparams_seed=5).hparams == draw.hparams


@pytest.mark.parametrize("overrides, message", [
    ({"lr": "-1"}, "out of range"),
    ({"lr": "fast"}, "is not float"),
    ({"batch_size": "2.5"}, "is not int"),
    ({"lrr": "0.1"}, "did you mean 'lr'"),
])
def test_bad_hyperparameters_say_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_spec("linear_sem", "erm", overrides=overrides)


def test_bad_options_and_names_are_errors():
    with pytest.raises(ConfigError, match="one of 'sigma', 'unit'"):
        make_spec("linear_sem", "erm", dataset_options={"y_noise": "loud"})
    with pytest.raises(ConfigError, match="do not exist"):
        make_spec("linear_sem", "erm", test_envs=[5])
    with pytest.raises(UnknownNameError):
        make_spec("linear_sem", "ermm")
    with pytest.raises(UnknownNameError, match="unknown protocol 'nope'"):
        make_spec("linear_sem", "erm", preset="nope")


def test_full_batch_protocols_stay_full_batch_in_every_draw():
    # linear_sem is a full-batch protocol (batch_size default 0): no draw may change that
    assert {make_spec("linear_sem", "erm", hparams_seed=seed).hparams["batch_size"] for seed in range(1, 20)} == {0}
    # an explicit value still wins
    assert make_spec("linear_sem", "erm", hparams_seed=3, overrides={"batch_size": 8}).hparams["batch_size"] == 8


def test_errors_name_the_owner_and_say_option_or_hyperparameter():
    with pytest.raises(ConfigError, match=r"unknown option 'n_per_envv' \(did you mean 'n_per_env'\?\) for dataset 'linear_sem'"):
        make_spec("linear_sem", "erm", dataset_options={"n_per_envv": 3})
    with pytest.raises(ConfigError, match=r"dataset 'linear_sem': option n_per_env=1 is out of range: use an integer in \[2, 10,000,000\]"):
        make_spec("linear_sem", "erm", dataset_options={"n_per_env": 1})
    with pytest.raises(ConfigError, match=r"method 'erm': hyperparameter lr=1000000.0 is out of range"):
        make_spec("linear_sem", "erm", overrides={"lr": 1e6})


def test_an_unknown_model_names_its_close_match():
    from invbench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown model 'linaer'. Did you mean 'linear'"):
        make_spec("linear_sem", "erm", model="linaer")
