"""The models, in one place. A dataset names its default; a spec may choose another."""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import nn


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


class Linear(nn.Module):
    """A linear model on the flattened input (with or without intercept)."""

    def __init__(self, n_inputs: int, n_outputs: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(n_inputs, n_outputs, bias=bias)
        _xavier_zero_bias(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))

    @property
    def coefficients(self) -> torch.Tensor:
        return self.linear.weight


class SmallCNN(nn.Module):
    """DomainBed's MNIST_CNN: four 3x3 convolutions with group norm, global pooling, linear head."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int):
        super().__init__()
        channels = input_shape[0]
        layers: list[nn.Module] = []
        widths = [(channels, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1)]
        for c_in, c_out, stride in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU(), nn.GroupNorm(8, c_out)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(128, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ModelBuilder = Callable[[tuple, int, Mapping], nn.Module]

MODELS: dict[str, ModelBuilder] = {
    "mlp": lambda shape, out, hp: MLP(math.prod(shape), hp["hidden_dim"], out),
    # sums the channels of a (C, H, W) input: the colour-blind oracle of the IRM paper
    "mlp_grayscale": lambda shape, out, hp: MLP(math.prod(shape[1:]), hp["hidden_dim"], out, grayscale_channels=shape[0]),
    "linear": lambda shape, out, hp: Linear(math.prod(shape), out, bias=True),
    "linear_nobias": lambda shape, out, hp: Linear(math.prod(shape), out, bias=False),
    "cnn": lambda shape, out, hp: SmallCNN(shape, out),
}

# The architecture hyperparameters (invbench.hparams.ARCHITECTURE_HPARAMS) each model reads;
# a model not named reads none. A run draws and records only its model's.
MODEL_HPARAMS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden_dim",),
    "mlp_grayscale": ("hidden_dim",),
}


def build_model(name: str, input_shape: tuple[int, ...], n_outputs: int, hparams: Mapping) -> nn.Module:
    from invbench.errors import ConfigError

    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    if name == "mlp_grayscale" and len(input_shape) < 2:
        raise ConfigError(f"model 'mlp_grayscale' needs (channels, ...) inputs; got shape {input_shape}")
    if name == "cnn" and len(input_shape) != 3:
        raise ConfigError(f"model 'cnn' needs (channels, height, width) inputs; got shape {input_shape}")
    return MODELS[name](tuple(input_shape), n_outputs, hparams)
