"""The IRM paper's "grayscale" oracle model: it sums the colour channels, so colour is invisible."""

import pytest
import torch

from invbench.errors import ConfigError
from invbench.models import build_model

SHAPE = (2, 14, 14)  # the IRM protocol's Colored MNIST input


def colored(n=5, seed=0):
    """Digits-like images with all the mass in one channel, as the IRM protocol colours them."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 14, 14, generator=gen)
    colour = torch.randint(0, 2, (n,), generator=gen)
    x = torch.zeros(n, *SHAPE)
    x[torch.arange(n), colour] = images
    return x


def test_first_layer_sees_one_channel_of_14_by_14():
    model = build_model("mlp_grayscale", SHAPE, 1, {"hidden_dim": 83})
    first = model.net[0]
    assert (first.in_features, first.out_features) == (14 * 14, 83)
    assert build_model("mlp", SHAPE, 1, {"hidden_dim": 83}).net[0].in_features == 2 * 14 * 14


def test_output_ignores_which_channel_carries_the_image():
    torch.manual_seed(0)
    model = build_model("mlp_grayscale", SHAPE, 1, {"hidden_dim": 16})
    x = colored()
    swapped = x.flip(dims=[1])  # every image in the other colour
    moved = torch.stack([x.sum(dim=1), torch.zeros(len(x), 14, 14)], dim=1)  # all in channel 0
    assert torch.allclose(model(x), model(swapped), atol=1e-6)
    assert torch.allclose(model(x), model(moved), atol=1e-6)
    # and it is the MLP applied to the channel sum
    assert torch.allclose(model(x), model.net(x.sum(dim=1).reshape(len(x), -1)), atol=1e-6)


def test_plain_mlp_does_see_colour():
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, 1, {"hidden_dim": 16})
    x = colored()
    assert not torch.allclose(model(x), model(x.flip(dims=[1])), atol=1e-4)


def test_grayscale_needs_a_channel_dimension():
    with pytest.raises(ConfigError, match="needs \\(channels, ...\\) inputs"):
        build_model("mlp_grayscale", (10,), 1, {"hidden_dim": 4})
