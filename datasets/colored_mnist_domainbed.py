"""Colored MNIST and Colored Fashion-MNIST, DomainBed's protocol."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from invbench.data import Dataset, DatasetFamily, Environment, holdout_split
from invbench.errors import ConfigError
from invbench.hparams import seed_hash
from invbench.registry import DATASETS
from invbench.tasks import Task
from invbench.datasets._colouring import ORACLE, check_flips, colour, common_options, flip_name, without_colour
from invbench.datasets._sources import load_images


@DATASETS.register("cmnist_domainbed")
class ColoredMNISTDomainBed(DatasetFamily):
    """Colored MNIST, DomainBed protocol: all 70,000 images in 3 envs (+90%, +80%, -90%), 28x28.

    Gulrajani & Lopez-Paz (2021), "In Search of Lost Domain Generalization", with the
    colouring of Arjovsky et al. (2019). MNIST's training and test images together are
    shuffled (by the data seed alone: DomainBed's colours depended on each job's seed, so
    every algorithm and hyperparameter draw saw different data) and dealt round-robin to the
    environments, with colour-flip probabilities 0.1, 0.2 and 0.9, named by the colour-label
    agreement. Label: digit < 5, flipped with probability 0.25; two classes with
    cross-entropy, as DomainBed. Each environment is split 80/20 into "train" (DomainBed's
    "in") and "val" ("out"); every environment can be the test one (default: the last).
    """

    images_kind = "mnist"
    task = "multiclass"
    model = "cnn"  # DomainBed's MNIST_CNN
    options = common_options("flips", (0.1, 0.2, 0.9), "colour-flip probability of each environment", 28)
    protocol = "domainbed"  # its values: invbench.paper_protocols
    oracle = ORACLE
    default_holdout_fraction = 0.2
    default_test_envs = (2,)

    @classmethod
    def env_names(cls, options: Mapping[str, Any]) -> list[str]:
        return [flip_name(f) for f in options["flips"]]

    @classmethod
    def default_test_envs_for(cls, options: Mapping[str, Any]) -> tuple[int, ...]:
        return (len(options["flips"]) - 1,)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if len(options["flips"]) < 2:
            raise ConfigError(f"{cls.name}: flips needs at least two environments; got {options['flips']}")
        check_flips(cls.name, "flips", options["flips"], cls.env_names(options))

    def build_oracle(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
                     data_dir: str | None) -> Dataset:
        return without_colour(self.build(options, data_seed, holdout_fraction, data_dir))

    def build(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
              data_dir: str | None) -> Dataset:
        loaded = load_images(self.images_kind, ("train", "t10k"), data_dir)
        stream = lambda *parts: torch.Generator().manual_seed(seed_hash(self.name, data_seed, *parts))
        order = torch.randperm(len(loaded.labels), generator=stream("shuffle")).numpy()
        flips = options["flips"]
        envs = []
        for i, (flip, name) in enumerate(zip(flips, self.env_names(options))):
            rows = np.sort(order[i::len(flips)])  # sorted: contiguous reads; the holdout reshuffles
            x, y, _ = colour(loaded.images[rows], loaded.labels[rows], flip, options["label_noise"],
                             options["image_size"], stream("env", i))
            splits = holdout_split(x, y, holdout_fraction, stream("holdout", i))
            envs.append(Environment(name, splits, info={"flip": flip, "n": len(y)}))
        size = options["image_size"]
        return Dataset(
            envs=envs, task=Task("multiclass"), input_shape=(2, size, size), n_outputs=2,
            source=dict(loaded.source),
            metadata={"protocol": "DomainBed (Gulrajani & Lopez-Paz 2021)", "label": "class < 5",
                      "label_noise": options["label_noise"]},
        )


@DATASETS.register("cfmnist_domainbed")
class ColoredFashionMNISTDomainBed(ColoredMNISTDomainBed):
    """Colored Fashion-MNIST, DomainBed protocol: all 70,000 Fashion-MNIST images, class < 5.

    Xiao et al. (2017), "Fashion-MNIST", in the construction of Gulrajani & Lopez-Paz (2021).
    """

    images_kind = "fashion-mnist"
