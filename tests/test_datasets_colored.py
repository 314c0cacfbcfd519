"""Colored (Fashion-)MNIST against the IRM and DomainBed protocols (docs/protocols.md sections 1, 4).

Statistics are checked within binomial tolerances: |p_hat - p| < 4 sqrt(p (1 - p) / n),
which a correct construction fails with probability below 1e-4 per check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from invbench.errors import ConfigError
from invbench.registry import DATASETS
from invbench.spec import make_spec
from invbench.datasets import _sources
from idx_helpers import decode, write_dataset

N_TRAIN, N_TEST = 12_000, 2_000  # a handmade "MNIST" with the real one's 6 : 1 proportions


def close(p_hat: float, p: float, n: int) -> bool:
    return abs(p_hat - p) < 4 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, N_TRAIN, N_TEST)
    return str(root)


def build(name, data_dir, seed=0, holdout=None, **options):
    family = DATASETS.get(name)()
    holdout = family.default_holdout_fraction if holdout is None else holdout
    return family.build(family.resolve_options(options), seed, holdout, data_dir)


def colours(x: torch.Tensor) -> np.ndarray:
    """1 where channel 1 is lit, 0 where channel 0 is; the other channel must be dark."""
    lit = x.flatten(2).amax(dim=2) > 0
    assert (lit.sum(dim=1) == 1).all(), "exactly one channel carries the image"
    return lit[:, 1].long().numpy()


# IRM protocol ---------------------------------------------------------------------------

def test_irm_protocol_environments_sizes_and_shapes(mnist_dir):
    ds = build("cmnist_irm", mnist_dir)
    assert ds.env_names == ["e=0.2", "e=0.1", "e=0.9"]
    assert [e.size() for e in ds.envs] == [5000, 5000, 2000]  # 50,000 / 2, 25,000, 10,000 at full size
    assert ds.input_shape == (2, 14, 14) and ds.n_outputs == 1 and ds.task.kind == "binary"
    assert all(set(e.splits) == {"train"} for e in ds.envs)  # holdout 0: whole environments
    x, y = ds.envs[0].splits["train"]
    assert x.shape == (5000, 2, 14, 14) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.float32 and set(y.unique().tolist()) == {0.0, 1.0}
    assert ds.source == {"name": "mnist", "location": ds.source["location"], "n_images": N_TRAIN}


def test_irm_protocol_uses_the_first_five_sixths_for_training_and_the_rest_for_test(mnist_dir):
    ds = build("cmnist_irm", mnist_dir)
    index = [decode(e.splits["train"][0])[1] for e in ds.envs]
    train = np.concatenate(index[:2])
    assert sorted(train.tolist()) == list(range(10_000))  # every image once, none twice
    assert sorted(index[2].tolist()) == list(range(10_000, 12_000))
    # shuffled, then dealt: neither environment is a contiguous block
    assert not (np.diff(np.sort(index[0])) == 1).all()


def test_irm_protocol_label_noise_and_colour_agreement_follow_the_protocol(mnist_dir):
    ds = build("cmnist_irm", mnist_dir)
    for env, flip in zip(ds.envs, (0.2, 0.1, 0.9)):
        x, y = env.splits["train"]
        digit, _ = decode(x)
        clean = (digit < 5).astype(np.int64)
        label = y.long().numpy()
        n = len(label)
        assert close((label != clean).mean(), 0.25, n), env.name  # shape alone: at most 75 %
        assert close((colours(x) == label).mean(), 1 - flip, n), env.name  # colour: 80, 90, 10 %
    # pixels are the grey values / 255, copied unchanged into the lit channel
    x, _ = ds.envs[0].splits["train"]
    digit, _ = decode(x)
    assert torch.allclose(x.sum(dim=1)[:, 0, 0], torch.from_numpy(10 + 20 * digit).float() / 255)


def test_irm_protocol_options(mnist_dir):
    ds = build("cmnist_irm", mnist_dir, train_flips=(0.3, 0.2, 0.1), test_flips=(0.9, 0.5),
               label_noise=0.0, image_size=28)
    assert ds.env_names == ["e=0.3", "e=0.2", "e=0.1", "e=0.9", "e=0.5"]
    assert [e.size() for e in ds.envs] == [3334, 3333, 3333, 1000, 1000]
    x, y = ds.envs[3].splits["train"]
    assert x.shape[1:] == (2, 28, 28)
    assert ((decode(x)[0] < 5) == y.numpy().astype(bool)).all()  # no label noise
    assert build("cmnist_irm", mnist_dir, image_size=7).envs[0].splits["train"][0].shape[1:] == (2, 7, 7)
    # the test environments follow the training ones, whatever their number
    spec = make_spec("cmnist_irm", "erm", dataset_options={"train_flips": "0.3,0.2,0.1", "test_flips": "0.9,0.5"})
    assert spec.test_envs == (3, 4)
    assert make_spec("cmnist_irm", "erm").test_envs == (2,)


@pytest.mark.parametrize("options, message", [
    ({"train_flips": (0.2, 0.2)}, "distinct"),
    ({"test_flips": (1.5,)}, r"probabilities in \[0, 1\]"),
    ({"test_flips": ()}, "at least one"),
    ({"image_size": 10}, "one of 7, 14, 28"),
    ({"label_noise": 2}, "out of range"),
])
def test_irm_protocol_bad_options_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        DATASETS.get("cmnist_irm").resolve_options(options)


def test_irm_protocol_training_defaults_are_the_papers():
    spec = make_spec("cmnist_irm", "erm")
    assert (spec.steps, spec.holdout_fraction, spec.model) == (500, 0.0, "mlp")
    assert {k: spec.hparams[k] for k in ("batch_size", "hidden_dim", "l2", "lr")} == {
        "batch_size": 0, "hidden_dim": 256, "l2": 0.001, "lr": 0.001}


def test_data_depend_on_the_data_seed_alone(mnist_dir):
    a, b, c = (build("cmnist_irm", mnist_dir, seed=s) for s in (0, 0, 1))
    for env_a, env_b in zip(a.envs, b.envs):
        assert torch.equal(env_a.splits["train"][0], env_b.splits["train"][0])
        assert torch.equal(env_a.splits["train"][1], env_b.splits["train"][1])
    assert not torch.equal(a.envs[0].splits["train"][1], c.envs[0].splits["train"][1])
    # a different test environment leaves the training environments' data unchanged
    d = build("cmnist_irm", mnist_dir, test_flips=(0.7,))
    assert torch.equal(a.envs[0].splits["train"][0], d.envs[0].splits["train"][0])
    assert torch.equal(a.envs[1].splits["train"][1], d.envs[1].splits["train"][1])


# DomainBed protocol ---------------------------------------------------------------------

def test_domainbed_protocol_uses_all_images_in_three_environments(mnist_dir):
    ds = build("cmnist_domainbed", mnist_dir)
    assert ds.env_names == ["+90%", "+80%", "-90%"]
    assert ds.input_shape == (2, 28, 28) and ds.n_outputs == 2 and ds.task.kind == "multiclass"
    assert ds.source["n_images"] == N_TRAIN + N_TEST
    index = []
    for env in ds.envs:
        n = env.size("train") + env.size("val")
        assert n in (4666, 4667)
        assert env.size("val") == int(0.2 * n)  # DomainBed's 80 / 20 "in" / "out", floored
        for split in ("train", "val"):
            index.append(decode(env.splits[split][0])[1])
    assert sorted(np.concatenate(index).tolist()) == list(range(N_TRAIN + N_TEST))


def test_domainbed_protocol_statistics(mnist_dir):
    ds = build("cmnist_domainbed", mnist_dir, holdout=0.0)
    for env, flip in zip(ds.envs, (0.1, 0.2, 0.9)):
        x, y = env.splits["train"]
        assert y.dtype == torch.int64
        label = y.numpy()
        n = len(label)
        assert close((label != (decode(x)[0] < 5)).mean(), 0.25, n), env.name
        assert close((colours(x) == label).mean(), 1 - flip, n), env.name


def test_domainbed_protocol_defaults():
    spec = make_spec("cmnist_domainbed", "erm")
    assert (spec.steps, spec.eval_every, spec.holdout_fraction, spec.model, spec.test_envs) == (
        5000, 100, 0.2, "cnn", (2,))
    assert spec.hparams["batch_size"] == 64
    spec = make_spec("cfmnist_domainbed", "erm", dataset_options={"flips": "0.1,0.9"})
    assert spec.test_envs == (1,)
    with pytest.raises(ConfigError, match="distinct"):
        make_spec("cmnist_domainbed", "erm", dataset_options={"flips": "0.1,0.1,0.9"})


# Real Fashion-MNIST (Debian's dataset-fashion-mnist) ------------------------------------

debian = pytest.mark.skipif(not (_sources.DEBIAN_FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                            reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def no_data_dir(monkeypatch):
    monkeypatch.delenv(_sources.DATA_ENV, raising=False)


@debian
def test_colored_fashion_mnist_irm_protocol_on_the_real_images(no_data_dir):
    ds = build("cfmnist_irm", None)
    assert ds.source == {"name": "fashion-mnist", "location": str(_sources.DEBIAN_FASHION_DIR), "n_images": 60_000}
    assert [e.size() for e in ds.envs] == [25_000, 25_000, 10_000]
    for env, flip in zip(ds.envs, (0.2, 0.1, 0.9)):
        x, y = env.splits["train"]
        assert close((colours(x) == y.long().numpy()).mean(), 1 - flip, len(y)), env.name
        # Fashion-MNIST is balanced (6,000 per class), so P(label 1) = 0.5 after symmetric noise
        assert close(y.mean().item(), 0.5, len(y)), env.name


@debian
def test_colored_fashion_mnist_domainbed_protocol_on_the_real_images(no_data_dir):
    ds = build("cfmnist_domainbed", None)
    assert ds.source["n_images"] == 70_000
    assert [e.size("train") + e.size("val") for e in ds.envs] == [23_334, 23_333, 23_333]
    for env, flip in zip(ds.envs, (0.1, 0.2, 0.9)):
        x, y = env.splits["val"]
        assert close((colours(x) == y.numpy()).mean(), 1 - flip, len(y)), env.name
