"""The colouring of Colored MNIST, shared by the IRM and DomainBed protocols.

Arjovsky et al. (2019), "Invariant Risk Minimization", section 5.2, and Gulrajani &
Lopez-Paz (2021), "In Search of Lost Domain Generalization", appendix: the binary label is
(class < 5), flipped with probability ``label_noise``; the colour is the label flipped with
the environment's probability ``flip``; the grey image is copied into two channels and the
channel (1 - colour) is zeroed; pixels are scaled to [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from invbench.errors import ConfigError
from invbench.hparams import HParam


def bernoulli(p: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n independent 0/1 draws with P(1) = p, as int64."""
    return (torch.rand(n, generator=generator) < p).long()


def colour(images: np.ndarray, classes: np.ndarray, flip: float, label_noise: float, image_size: int,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coloured images (n, 2, s, s) float32 in [0, 1], noisy binary labels and colours (int64).

    ``image_size`` 14 takes every second row and column of the 28x28 images (the IRM code's
    downsampling); 28 keeps them whole (DomainBed). The label noise is drawn before the
    colour, both from ``generator``.
    """
    step = 28 // image_size
    grey = torch.from_numpy(np.ascontiguousarray(images[:, ::step, ::step]))
    labels = torch.from_numpy(np.asarray(classes) < 5).long()
    labels = labels ^ bernoulli(label_noise, len(labels), generator)
    colours = labels ^ bernoulli(flip, len(labels), generator)
    x = torch.stack([grey, grey], dim=1).float().div_(255.0)
    x[torch.arange(len(x)), 1 - colours] = 0.0  # the other channel stays: colour 1 lights channel 1
    return x, labels, colours


ORACLE = "colour made constant: every image in the first channel (the grey image; a colour-blind model's input)"


def without_colour(dataset: Any) -> Any:
    """The oracle data of Colored MNIST: every image of every split in channel 0, channel 1
    zero, so colour says nothing. The channel sum is the grey image, exactly what the IRM
    paper's grayscale model (model mlp_grayscale) sees; any other model sees no colour."""
    for env in dataset.envs:
        for split, (x, y) in env.splits.items():
            grey = torch.zeros_like(x)
            grey[:, 0] = x.sum(dim=1)
            env.splits[split] = (grey, y)
    dataset.metadata["oracle"] = True
    return dataset


def flip_name(flip: float) -> str:
    """DomainBed's names: the colour-label agreement, signed ("+90%" for flip 0.1, "-90%" for 0.9)."""
    agreement = 1.0 - flip
    return f"+{100 * agreement:g}%" if agreement >= 0.5 else f"-{100 * flip:g}%"


def check_flips(dataset: str, name: str, flips: tuple, names: list[str]) -> None:
    bad = [f for f in flips if not 0.0 <= f <= 1.0]
    if bad:
        raise ConfigError(f"{dataset}: {name} are probabilities in [0, 1]; got {bad}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{dataset}: environments need distinct {name}, so that their names differ; "
                          f"got {', '.join(map(str, flips))}")


def common_options(flips_name: str, flips: tuple, flips_help: str, image_size: int) -> dict[str, HParam]:
    """The options both protocols share: colour flips, label noise and image size."""
    return {
        flips_name: HParam(flips, help=flips_help),
        "label_noise": HParam(0.25, low=0.0, high=1.0, help="probability that the binary label is flipped"),
        "image_size": HParam(image_size, choices=(7, 14, 28),
                             help="side of the images: 28 whole, 14 every second row and column, 7 every fourth"),
    }
