"""Models are a registry: each declares the inputs and tasks it accepts, and a check says,
before any run starts, whether a model fits a dataset and which models do."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from invbench.errors import ConfigError
from invbench.models import MODELS, Accepts, accepts_of, build_model, check_model_fits, models_that_fit, register_model
from invbench.runner import run
from invbench.spec import make_spec

BUILT_IN = {"cnn", "feature_matrix", "linear", "linear_nobias", "linear_torch_init", "mlp", "mlp_grayscale"}


@pytest.fixture
def throwaway_models():
    """Register models for one test and remove them afterwards."""
    names = []

    def register(name, accepts=Accepts()):
        def decorator(build):
            names.append(name)
            return register_model(name, accepts)(build)
        return decorator

    yield register
    for name in names:
        MODELS.unregister(name)


def test_the_built_in_models_are_registered():
    assert set(MODELS.names()) == BUILT_IN
    assert "cnn" in MODELS and list(MODELS) == sorted(BUILT_IN)


# Which models fit which data: derived from what each network does with its input. The
# MLPs and linear models flatten any shape; the grayscale MLP sums over a channel axis, so it
# needs at least two dimensions; the CNN convolves (channels, height, width) images only; the
# SEM's feature matrix is square over a feature vector.
@pytest.mark.parametrize("shape, fitting", [
    ((10,), {"feature_matrix", "linear", "linear_nobias", "linear_torch_init", "mlp"}),
    ((2, 196), {"linear", "linear_nobias", "linear_torch_init", "mlp", "mlp_grayscale"}),
    ((2, 14, 14), BUILT_IN - {"feature_matrix"}),
    ((1, 2, 14, 14), {"linear", "linear_nobias", "linear_torch_init", "mlp", "mlp_grayscale"}),
])
def test_models_that_fit_each_input_shape(shape, fitting):
    assert set(models_that_fit(shape, 1)) == fitting
    for name in fitting:
        check_model_fits(name, shape, 1)  # no error
        outputs = 3 if accepts_of(name).problem(shape, 3) is None else 1  # the feature matrix has one
        model = build_model(name, shape, outputs, {"hidden_dim": 4})
        assert model(torch.zeros(5, *shape)).shape == (5, outputs)  # and it really takes such inputs


def test_a_model_that_does_not_fit_is_one_line_naming_those_that_do():
    with pytest.raises(ConfigError) as info:
        check_model_fits("cnn", (10,), 1)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model 'cnn' needs (channels, height, width) inputs")
    assert "shape (10,)" in message
    assert message.endswith("models that fit: feature_matrix, linear, linear_nobias, linear_torch_init, mlp")


def test_building_a_model_that_does_not_fit_is_the_same_error():
    with pytest.raises(ConfigError, match="models that fit: feature_matrix, linear, linear_nobias, linear_torch_init, mlp$"):
        build_model("mlp_grayscale", (10,), 1, {"hidden_dim": 4})


def test_unknown_model_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        check_model_fits("cnnn", (2, 28, 28), 2)
    assert "unknown model 'cnnn'" in str(info.value) and "Did you mean 'cnn'" in str(info.value)


def test_no_model_fits_says_so():
    with pytest.raises(ConfigError, match="needs at least one output.*no registered model fits them"):
        check_model_fits("mlp", (4,), 0)


def test_a_model_declares_the_tasks_it_serves(throwaway_models):
    @throwaway_models("regression_only", Accepts(tasks=("regression",)))
    def regression_only(shape, n_outputs, hp):
        """A linear regressor."""
        return nn.Linear(shape[0], n_outputs)

    check_model_fits("regression_only", (3,), 1, task="regression")
    with pytest.raises(ConfigError) as info:
        check_model_fits("regression_only", (3,), 1, task="binary")
    assert "serves only regression tasks" in str(info.value)
    assert "regression_only" not in str(info.value).split("models that fit:")[1]
    assert "regression_only" in models_that_fit((3,), 1, task="regression")


def test_a_custom_shape_check_is_part_of_the_fit(throwaway_models):
    @throwaway_models("square_images", Accepts(min_rank=3, max_rank=3, inputs="(channels, height, width)",
                                               check=lambda s, n: None if s[1] == s[2] else "needs square images"))
    def square_images(shape, n_outputs, hp):
        """Square images only."""
        return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], n_outputs))

    check_model_fits("square_images", (2, 7, 7), 1)
    with pytest.raises(ConfigError, match="model 'square_images' needs square images"):
        check_model_fits("square_images", (2, 7, 5), 1)


def test_a_registered_model_trains_in_a_run(throwaway_models, tmp_path):
    built = []

    @throwaway_models("tiny_linear", Accepts(max_rank=1, inputs="feature-vector"))
    def tiny_linear(shape, n_outputs, hp):
        """A linear model without bias, registered by a test."""
        built.append(shape)
        return nn.Linear(shape[0], n_outputs, bias=False)

    spec = make_spec("linear_sem", "erm", model="tiny_linear", dataset_options={"n_per_env": 20}, steps=2,
                     eval_every=1, device="cpu")
    run_dir = run(spec, tmp_path)
    assert built == [(10,)]  # linear_sem's inputs: the 5 causes and the 5 effects
    assert json.loads((run_dir / "spec.json").read_text())["model"] == "tiny_linear"
    assert (run_dir / "done.json").exists()


def test_models_registered_by_dataset_modules_are_found_by_name(tmp_path, monkeypatch):
    # MODELS also imports the modules of invbench.datasets: a dataset's own model (an
    # oracle) is found even when no dataset was looked up first. Shown with a registry of
    # the same shape over two throwaway packages.
    for package in ("home_pkg", "other_pkg"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "home_pkg" / "builtin.py").write_text(
        "from test_models_registry_things import THINGS\nTHINGS.register('a')(lambda: 'a')\n")
    (tmp_path / "other_pkg" / "family.py").write_text(
        "from test_models_registry_things import THINGS\nTHINGS.register('b')(lambda: 'b')\n")
    (tmp_path / "test_models_registry_things.py").write_text(
        "from invbench.registry import Registry\nTHINGS = Registry('thing', 'home_pkg', also=('other_pkg',))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import test_models_registry_things as things

    assert things.THINGS.get("b")() == "b" and things.THINGS.names() == ["a", "b"]
    assert MODELS.also == ("invbench.datasets",)
