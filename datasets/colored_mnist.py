"""Colored MNIST and Colored Fashion-MNIST, the IRM paper's protocol."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from invbench.data import Dataset, DatasetFamily, Environment, holdout_split
from invbench.errors import ConfigError
from invbench.hparams import HParam, seed_hash
from invbench.registry import DATASETS
from invbench.tasks import Task
from invbench.datasets._colouring import ORACLE, check_flips, colour, common_options, without_colour
from invbench.datasets._sources import load_images


@DATASETS.register("cmnist_irm")
class ColoredMNISTIRM(DatasetFamily):
    """Colored MNIST, IRM protocol: 2 training envs (flip 0.2, 0.1) and a test env (0.9), 14x14.

    Arjovsky et al. (2019), "Invariant Risk Minimization", section 5.2 and its code. MNIST's
    training split only: the first 50,000 images are shuffled (by the data seed; the original
    used numpy's global state) and dealt round-robin to the training environments (the
    even- and odd-indexed 25,000 for two); the last 10,000 form the test environment(s),
    dealt the same way when there are several. Label: digit < 5, flipped with probability
    ``label_noise``; colour: the label flipped with the environment's probability. Shape
    alone predicts at most 1 - label_noise = 75 %; colour 80 %, 90 % and 10 %.
    Environments are named "e=<flip>". With a 5,000-image subset the same 5/6 : 1/6 split
    applies; the source's name records it.
    """

    images_kind = "mnist"  # which images the colours go on (invbench.datasets._sources.KINDS)
    task = "binary"
    model = "mlp"
    options = {
        **common_options("train_flips", (0.2, 0.1), "colour-flip probability of each training environment", 14),
        "test_flips": HParam((0.9,), help="colour-flip probability of each test environment (after the training ones)"),
    }
    protocol = "irm-paper"  # its values: invbench.paper_protocols
    oracle = ORACLE
    default_holdout_fraction = 0.0  # the IRM protocol evaluates on whole environments
    default_test_envs = (2,)

    @classmethod
    def env_names(cls, options: Mapping[str, Any]) -> list[str]:
        return [f"e={f:g}" for f in (*options["train_flips"], *options["test_flips"])]

    @classmethod
    def default_test_envs_for(cls, options: Mapping[str, Any]) -> tuple[int, ...]:
        first = len(options["train_flips"])
        return tuple(range(first, first + len(options["test_flips"])))

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if not options["train_flips"] or not options["test_flips"]:
            raise ConfigError(f"{cls.name}: train_flips and test_flips each need at least one probability")
        flips = (*options["train_flips"], *options["test_flips"])
        check_flips(cls.name, "train_flips and test_flips", flips, cls.env_names(options))

    def build_oracle(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
                     data_dir: str | None) -> Dataset:
        return without_colour(self.build(options, data_seed, holdout_fraction, data_dir))

    def build(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
              data_dir: str | None) -> Dataset:
        loaded = load_images(self.images_kind, ("train",), data_dir)
        n_fit = loaded.n_train * 5 // 6  # 50,000 of MNIST's 60,000 training images
        # Each random choice has its own seeded stream, so that e.g. adding a test
        # environment leaves the training environments' data unchanged.
        stream = lambda *parts: torch.Generator().manual_seed(seed_hash(self.name, data_seed, *parts))
        order = torch.randperm(n_fit, generator=stream("shuffle")).numpy()
        groups = [("train", options["train_flips"], order), ("test", options["test_flips"], None)]
        envs = []
        names = iter(self.env_names(options))
        for role, flips, rows in groups:
            if rows is None:
                rows = torch.arange(n_fit, loaded.n_train).numpy()
            for i, flip in enumerate(flips):
                picked = rows[i::len(flips)]
                name = next(names)
                x, y, _ = colour(loaded.images[picked], loaded.labels[picked], flip, options["label_noise"],
                                 options["image_size"], stream(role, i))
                splits = holdout_split(x, y.float(), holdout_fraction, stream("holdout", role, i))
                envs.append(Environment(name, splits, info={"flip": flip, "role": role, "n": len(y)}))
        size = options["image_size"]
        return Dataset(
            envs=envs, task=Task("binary"), input_shape=(2, size, size), n_outputs=1,
            source=dict(loaded.source),
            metadata={"protocol": "IRM (Arjovsky et al. 2019)", "label": "class < 5",
                      "label_noise": options["label_noise"], "images_used": loaded.n_train},
        )


@DATASETS.register("cfmnist_irm")
class ColoredFashionMNISTIRM(ColoredMNISTIRM):
    """Colored Fashion-MNIST, IRM protocol: Colored MNIST's construction on Fashion-MNIST (class < 5).

    Xiao et al. (2017), "Fashion-MNIST", with the colouring of Arjovsky et al. (2019): label
    1 for T-shirts, trousers, pullovers, dresses and coats (classes 0..4). The whole
    training split is available offline from Debian's dataset-fashion-mnist, where the
    published effect reproduces (docs/protocols.md section 7).
    """

    images_kind = "fashion-mnist"
