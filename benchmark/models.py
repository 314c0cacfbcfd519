"""The models: a registry of builders, each saying which inputs and tasks it accepts.

A model is a builder ``(input_shape, n_outputs, hparams) -> nn.Module`` registered with
``@register_model(name, accepts=Accepts(...))``; ``Accepts`` says which input shapes
(their rank: 1 for feature vectors, 3 for (channels, height, width) images) and which
task kinds it can serve, so that ``check_model_fits`` can tell before a run starts whether
a model fits a dataset, and name the models that do. A dataset names its default model; a
spec may choose another. Plugins register models the same way (docs/adding_a_dataset.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from invbench.errors import ConfigError, UnknownNameError
from invbench.packed import packed_linear
from invbench.registry import MODELS
from invbench.tasks import TASK_TYPES

__all__ = ["MODELS", "Accepts", "register_model", "check_model_fits", "build_model", "MLP", "Linear", "FeatureMatrix",
           "SmallCNN"]

ModelBuilder = Callable[[tuple, int, Mapping], nn.Module]


@dataclass(frozen=True)
class Accepts:
    """What a model can be built for.

    ``min_rank`` / ``max_rank`` bound the number of input dimensions (None: no bound);
    ``inputs`` names them for messages ("(channels, height, width)"); ``tasks`` are the task
    kinds it serves (invbench.tasks.TASK_TYPES); ``check``, if given, returns a problem with
    a shape the ranks cannot express (e.g. "needs 28x28 images"), or None.
    """

    min_rank: int = 1
    max_rank: int | None = None
    inputs: str = "any"
    tasks: tuple[str, ...] = TASK_TYPES
    check: Callable[[tuple[int, ...], int], str | None] | None = None

    def problem(self, input_shape: tuple[int, ...], n_outputs: int, task: str | None = None) -> str | None:
        """Why the model cannot take these data, or None when it can."""
        rank = len(input_shape)
        if rank < self.min_rank or (self.max_rank is not None and rank > self.max_rank):
            return f"needs {self.inputs} inputs"
        if n_outputs < 1:
            return "needs at least one output"
        if task is not None and task not in self.tasks:
            return f"serves only {', '.join(self.tasks)} tasks"
        return self.check(input_shape, n_outputs) if self.check is not None else None


ANY_INPUT = Accepts()


def register_model(name: str, accepts: Accepts = ANY_INPUT) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder under ``name``; its docstring's first line describes it."""

    def decorator(build: ModelBuilder) -> ModelBuilder:
        build.accepts = accepts  # type: ignore[attr-defined]
        return MODELS.register(name)(build)

    return decorator


def accepts_of(name: str) -> Accepts:
    return getattr(MODELS.get(name), "accepts", ANY_INPUT)


def _shape_text(input_shape: Sequence[int], n_outputs: int) -> str:
    shape = tuple(int(d) for d in input_shape)
    return f"inputs of shape {shape} and {n_outputs} output{'' if n_outputs == 1 else 's'}"


def models_that_fit(input_shape: Sequence[int], n_outputs: int, task: str | None = None) -> list[str]:
    """Names of the registered models that can be built for these data, sorted."""
    shape = tuple(input_shape)
    return [name for name in MODELS.names() if accepts_of(name).problem(shape, n_outputs, task) is None]


def check_model_fits(model_name: str, input_shape: Sequence[int], n_outputs: int, task: str | None = None) -> None:
    """Raise ConfigError (one line, naming the models that fit) unless ``model_name`` can be
    built for inputs of ``input_shape`` with ``n_outputs`` outputs (and ``task``, if given)."""
    shape = tuple(input_shape)
    try:
        accepts = accepts_of(model_name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None
    problem = accepts.problem(shape, n_outputs, task)
    if problem is None:
        return
    fitting = models_that_fit(shape, n_outputs, task)
    those = f"models that fit: {', '.join(fitting)}" if fitting else "no registered model fits them"
    raise ConfigError(f"model {model_name!r} {problem}; the data have {_shape_text(shape, n_outputs)}; {those}")


def build_model(name: str, input_shape: Sequence[int], n_outputs: int, hparams: Mapping) -> nn.Module:
    """The registered model ``name`` for these data (ConfigError when it does not fit them)."""
    check_model_fits(name, input_shape, n_outputs)
    return MODELS.get(name)(tuple(input_shape), n_outputs, hparams)


# The networks ---------------------------------------------------------------------------

def _xavier_zero_bias(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """The IRM paper's MLP: in -> h -> h -> out, ReLU, Xavier-uniform weights, zero biases."""

    def __init__(self, n_inputs: int, hidden: int, n_outputs: int, grayscale_channels: int = 0):
        super().__init__()
        # The "grayscale" oracle sums the colour channels first, so colour is invisible.
        self.grayscale_channels = grayscale_channels
        self.net = nn.Sequential(
            nn.Linear(n_inputs, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, n_outputs),
        )
        _xavier_zero_bias(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grayscale_channels:
            x = x.reshape(x.shape[0], self.grayscale_channels, -1).sum(dim=1)
        return self.net(x.reshape(x.shape[0], -1))

    # A pack of MLPs (invbench.packed): params hold this model's parameters stacked along a
    # leading run dimension; inputs are (R, n, ...). Featurizer: the two hidden layers;
    # classifier: the last linear layer.
    def features_packed(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        runs, n = x.shape[0], x.shape[1]
        if self.grayscale_channels:
            x = x.reshape(runs, n, self.grayscale_channels, -1).sum(dim=2)
        h = x.reshape(runs, n, -1)
        h = torch.relu(packed_linear(h, params["net.0.weight"], params["net.0.bias"]))
        return torch.relu(packed_linear(h, params["net.2.weight"], params["net.2.bias"]))

    def classify_packed(self, params: dict, z: torch.Tensor) -> torch.Tensor:
        return packed_linear(z, params["net.4.weight"], params["net.4.bias"])

    def forward_packed(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return self.classify_packed(params, self.features_packed(params, x))


class Linear(nn.Module):
    """A linear model on the flattened input (with or without intercept). Initialised with
    Xavier-uniform weights and a zero intercept, or with ``torch_init`` as torch.nn.Linear
    initialises itself: weights and intercept uniform in +-1/sqrt(inputs)."""

    def __init__(self, n_inputs: int, n_outputs: int, bias: bool = True, torch_init: bool = False):
        super().__init__()
        self.linear = nn.Linear(n_inputs, n_outputs, bias=bias)
        if not torch_init:
            _xavier_zero_bias(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))

    @property
    def coefficients(self) -> torch.Tensor:
        return self.linear.weight

    # A pack of linear models (invbench.packed). The featurizer is the identity on the
    # flattened input, the classifier the linear map.
    def features_packed(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], -1)

    def classify_packed(self, params: dict, z: torch.Tensor) -> torch.Tensor:
        return packed_linear(z, params["linear.weight"], params.get("linear.bias"))

    def forward_packed(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return self.classify_packed(params, self.features_packed(params, x))


class FeatureMatrix(nn.Module):
    """The IRM paper's SEM model: x Phi w, a trained d x d feature matrix Phi (the identity at
    the start, whatever the seed) and a fixed classifier w = ones (d x 1), which is not a
    parameter: only Phi trains. Its solution, Phi w, is the linear map it computes."""

    def __init__(self, n_inputs: int):
        super().__init__()
        self.phi = nn.Parameter(torch.eye(n_inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.phi @ self._classifier(self.phi)

    @property
    def coefficients(self) -> torch.Tensor:
        """(Phi w)^T, shaped (outputs, inputs) as a linear layer's weight."""
        return (self.phi @ self._classifier(self.phi)).T

    @staticmethod
    def _classifier(like: torch.Tensor) -> torch.Tensor:
        return like.new_ones(like.shape[1], 1)

    # A pack (invbench.packed): the featurizer is x Phi, the classifier the fixed w, so a
    # method that scales the features by a dummy vector at 1 differentiates with respect to w.
    def features_packed(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        phi = params["phi"]  # (R, d, d); x Phi = x (Phi^T)^T, a linear layer with weight Phi^T
        return packed_linear(x.reshape(x.shape[0], x.shape[1], -1), phi.transpose(1, 2), None)

    def classify_packed(self, params: dict, z: torch.Tensor) -> torch.Tensor:
        return packed_linear(z, z.new_ones(z.shape[0], 1, z.shape[2]), None)

    def forward_packed(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return self.classify_packed(params, self.features_packed(params, x))


class SmallCNN(nn.Module):
    """DomainBed's MNIST_CNN: four 3x3 convolutions with group norm, global pooling, linear head."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int):
        super().__init__()
        channels = input_shape[0]
        layers: list[nn.Module] = []
        widths = [(channels, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1)]
        for c_in, c_out, stride in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU(), nn.GroupNorm(8, c_out)]
        # featurizer / classifier: the names invbench.packed looks for
        self.featurizer = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(128, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.featurizer(x))


# The registered models ------------------------------------------------------------------

@register_model("mlp")
def mlp(input_shape: tuple, n_outputs: int, hp: Mapping) -> nn.Module:
    """The IRM paper's MLP on the flattened input (width: hidden_dim)."""
    return MLP(math.prod(input_shape), hp["hidden_dim"], n_outputs)

# The architecture hyperparameters (invbench.hparams.ARCHITECTURE_HPARAMS) each model reads;
# a model not named reads none. A run draws and records only its model's.
MODEL_HPARAMS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden_dim",),
    "mlp_grayscale": ("hidden_dim",),
}


@register_model("mlp_grayscale", Accepts(min_rank=2, inputs="(channels, ...)"))
def mlp_grayscale(input_shape: tuple, n_outputs: int, hp: Mapping) -> nn.Module:
    """The IRM paper's colour-blind oracle: the MLP on the sum of the channels."""
    return MLP(math.prod(input_shape[1:]), hp["hidden_dim"], n_outputs, grayscale_channels=input_shape[0])


@register_model("linear")
def linear(input_shape: tuple, n_outputs: int, hp: Mapping) -> nn.Module:
    """A linear model with intercept on the flattened input."""
    return Linear(math.prod(input_shape), n_outputs, bias=True)


@register_model("linear_torch_init")
def linear_torch_init(input_shape: tuple, n_outputs: int, hp: Mapping) -> nn.Module:
    """A linear model with intercept, initialised as torch.nn.Linear is (uniform in +-1/sqrt(d)), as the linear unit tests' code."""
    return Linear(math.prod(input_shape), n_outputs, bias=True, torch_init=True)


@register_model("linear_nobias")
def linear_nobias(input_shape: tuple, n_outputs: int, hp: Mapping) -> nn.Module:
    """A linear model without intercept (least squares through the origin)."""
    return Linear(math.prod(input_shape), n_outputs, bias=False)


def _one_output(input_shape: tuple[int, ...], n_outputs: int) -> str | None:
    return None if n_outputs == 1 else "needs one output (its fixed classifier w has one column)"


@register_model("feature_matrix", Accepts(max_rank=1, inputs="feature-vector", tasks=("binary", "regression"),
                                          check=_one_output))
def feature_matrix(input_shape: tuple, n_outputs: int, hp: Mapping) -> nn.Module:
    """The IRM paper's SEM model: x Phi w, Phi (d x d, the identity at the start) trained, w = ones fixed."""
    return FeatureMatrix(math.prod(input_shape))


@register_model("cnn", Accepts(min_rank=3, max_rank=3, inputs="(channels, height, width)"))
def cnn(input_shape: tuple, n_outputs: int, hp: Mapping) -> nn.Module:
    """DomainBed's MNIST_CNN for (channels, height, width) images."""
    return SmallCNN(input_shape, n_outputs)
