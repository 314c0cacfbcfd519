"""The linear unit tests for invariance of Aubin et al. (2021): Example1, 2, 3 and their "s" variants."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from invbench.data import Dataset, DatasetFamily, Environment, holdout_split, shuffle_columns
from invbench.hparams import HParam, seed_hash
from invbench.registry import DATASETS
from invbench.splits import TEST, TRAIN, VAL
from invbench.tasks import Task


class LinearUnitTest(DatasetFamily):
    """Shared construction of the unit tests; subclasses define the environments and sampling.

    Aubin, Slowik, Arjovsky, Bottou & Lopez-Paz (2021), "Linear unit-tests for invariance
    discovery". Inputs are [invariant block (dim_inv), spurious block (dim_spu)]; the "s"
    variants right-multiply them by a random orthogonal matrix. Each environment has three
    independent samples of n_per_env: "train", "val" (or, with a positive holdout
    fraction, a holdout of "train") and "test", in which the spurious block is shuffled
    across rows before scrambling, breaking its link with the target. Every environment
    trains (no test environment); the metric is the mean over environments of the "test"
    split's error. Environments are named E0, E1, ...: their parameters (extra environments
    beyond the paper's three are drawn by the data seed) are in each environment's info.
    """

    example: str = ""  # "example1", ...: the data stream, shared by the scrambled variant
    scrambled: bool = False
    model = "linear_torch_init"  # a linear model with bias, initialised as the paper's code
    options = {
        "dim_inv": HParam(5, low=1, high=10_000, help="dimension of the invariant block"),
        "dim_spu": HParam(5, low=1, high=10_000, help="dimension of the spurious block"),
        "n_envs": HParam(3, low=2, high=1000, help="environments; beyond 3 their parameters are drawn"),
        "n_per_env": HParam(10_000, low=2, high=10_000_000, help="samples per environment and split"),
    }
    protocol = "linear-unit-tests"  # its values: invbench.paper_protocols
    oracle = "the training and validation splits built like the test split: the spurious block shuffled across rows"
    default_holdout_fraction = 0.0
    default_test_envs = ()

    @classmethod
    def env_names(cls, options: Mapping[str, Any]) -> list[str]:
        return [f"E{i}" for i in range(options["n_envs"])]

    def env_params(self, options: Mapping[str, Any], index: int, gen: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def setup(self, options: Mapping[str, Any], gen: torch.Generator) -> None:
        """Draw the shared parameters (weights) of the example."""

    def sample(self, options: Mapping[str, Any], params: Mapping[str, Any], n: int, gen: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def build(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
              data_dir: str | None) -> Dataset:
        return self._build(options, data_seed, holdout_fraction, oracle=False)

    def build_oracle(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
                     data_dir: str | None) -> Dataset:
        """The paper's oracle trains and validates on samples drawn as the test split is (its
        spurious block shuffled across rows); the test splits are the usual ones."""
        return self._build(options, data_seed, holdout_fraction, oracle=True)

    def _build(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float, oracle: bool) -> Dataset:
        # Independent seeded streams per purpose: the "s" variant sees the same data as the
        # plain one, only rotated, and a new environment leaves the others unchanged.
        stream = lambda *parts: torch.Generator().manual_seed(seed_hash(self.example, data_seed, *parts))
        dim_inv, n = options["dim_inv"], options["n_per_env"]
        dim = dim_inv + options["dim_spu"]
        self.setup(options, stream("weights"))
        scramble = torch.linalg.qr(torch.randn(dim, dim, generator=stream("scramble")))[0] if self.scrambled \
            else torch.eye(dim)
        envs = []
        spurious = slice(dim_inv, dim)
        # the oracle's training and validation samples are the usual ones with the spurious
        # block shuffled (its own streams), so they differ from the usual data in that alone
        shuffled = lambda x, *parts: shuffle_columns(x, spurious, stream("oracle", *parts)) if oracle else x
        for i, name in enumerate(self.env_names(options)):
            params = self.env_params(options, i, stream("env", i))
            x, y = self.sample(options, params, n, stream("sample", i, TRAIN))
            splits = holdout_split(shuffled(x, i, TRAIN) @ scramble, y, holdout_fraction, stream("holdout", i))
            if VAL not in splits:
                x_val, y_val = self.sample(options, params, n, stream("sample", i, VAL))
                splits[VAL] = (shuffled(x_val, i, VAL) @ scramble, y_val)
            x_test, y_test = self.sample(options, params, n, stream("sample", i, TEST))
            splits[TEST] = (shuffle_columns(x_test, spurious, stream("shuffle", i)) @ scramble, y_test)
            envs.append(Environment(name, splits, info=params))
        return Dataset(
            envs=envs, task=Task(self.task), input_shape=(dim,), n_outputs=1,
            source={"name": "synthetic", "location": self.name, "n_images": 3 * n * len(envs)},
            metadata={"protocol": "Aubin et al. 2021", "scrambled": self.scrambled, "oracle": oracle},
        )


@DATASETS.register("example1")
class Example1(LinearUnitTest):
    """Example1: regression, cause x and effect z of a target with environment-scaled noise.

    x ~ N(0, s_e^2), y = x W_xy + N(0, s_e^2), z = y W_yz + N(0, 1), target = sum of y;
    W_xy = randn / dim_inv, W_yz = randn / dim_spu; s_e = 0.1, 1.5, 2, extra environments
    10^U(-2, 1). The invariant predictor's test MSE is dim_inv * s_e^2 (10.43 on average).
    """

    example = "example1"
    task = "regression"

    def setup(self, options, gen):
        d_inv, d_spu = options["dim_inv"], options["dim_spu"]
        self.w_xy = torch.randn(d_inv, d_inv, generator=gen) / d_inv
        self.w_yz = torch.randn(d_inv, d_spu, generator=gen) / d_spu

    def env_params(self, options, index, gen):
        paper = (0.1, 1.5, 2.0)
        sd = paper[index] if index < len(paper) else 10 ** (torch.rand(1, generator=gen).item() * 3 - 2)
        return {"sd": sd}

    def sample(self, options, params, n, gen):
        sd = params["sd"]
        x = torch.randn(n, options["dim_inv"], generator=gen) * sd
        y = x @ self.w_xy + torch.randn(n, options["dim_inv"], generator=gen) * sd
        z = y @ self.w_yz + torch.randn(n, options["dim_spu"], generator=gen)
        return torch.cat([x, z], dim=1), y.sum(dim=1)


@DATASETS.register("example2")
class Example2(LinearUnitTest):
    """Example2: classification, "cows and camels": a 100x weaker invariant signal than the background.

    Groups (animal, background) with probabilities [p s, (1-p) s, p (1-s), (1-p)(1-s)]:
    the animal is a cow (+1) with probability s and sits on its usual background with
    probability p. Invariant block (N(0, 0.1) + animal) x 0.01, spurious block
    (N(0, 0.1) + background) x 1; label = (sum of the invariant block > 0).
    (p, s) = (0.95, 0.3), (0.97, 0.5), (0.99, 0.7); extra environments p ~ U(0.9, 1),
    s ~ U(0.3, 0.7). A background-only classifier errs with probability 0.45 on the test
    split, on average over the three environments.
    """

    example = "example2"
    task = "binary"

    def env_params(self, options, index, gen):
        paper = ((0.95, 0.3), (0.97, 0.5), (0.99, 0.7))
        if index < len(paper):
            p, s = paper[index]
        else:
            p, s = 0.9 + 0.1 * torch.rand(1, generator=gen).item(), 0.3 + 0.4 * torch.rand(1, generator=gen).item()
        return {"p": p, "s": s}

    def sample(self, options, params, n, gen):
        p, s = params["p"], params["s"]
        weights = torch.tensor([p * s, (1 - p) * s, p * (1 - s), (1 - p) * (1 - s)])
        group = torch.multinomial(weights, n, replacement=True, generator=gen)
        animal = torch.tensor([1.0, 1.0, -1.0, -1.0])[group]
        background = torch.tensor([1.0, -1.0, -1.0, 1.0])[group]
        noise = lambda d: torch.randn(n, d, generator=gen) / math.sqrt(10)  # variance 0.1
        inv = (noise(options["dim_inv"]) + animal[:, None]) * 1e-2
        spu = (noise(options["dim_spu"]) + background[:, None]) * 1.0
        return torch.cat([inv, spu], dim=1), (inv.sum(dim=1) > 0).float()


@DATASETS.register("example3")
class Example3(LinearUnitTest):
    """Example3: classification, a small invariant margin against a large spurious one.

    Balanced classes; invariant block N(+-0.1, 0.1^2) per dimension (+ for class 0);
    spurious block N(+-mu_e, 0.1^2) with mu_e ~ N(0, I) drawn for each environment.
    """

    example = "example3"
    task = "binary"

    def env_params(self, options, index, gen):
        return {"mu": torch.randn(options["dim_spu"], generator=gen).tolist()}

    def sample(self, options, params, n, gen):
        half = n // 2
        mu = torch.tensor(params["mu"])
        sign = torch.cat([torch.ones(half), -torch.ones(n - half)])[:, None]  # class 0, then class 1
        inv = torch.randn(n, options["dim_inv"], generator=gen) * 0.1 + 0.1 * sign
        spu = torch.randn(n, options["dim_spu"], generator=gen) * 0.1 + mu * sign
        return torch.cat([inv, spu], dim=1), (sign[:, 0] < 0).float()


@DATASETS.register("example1s")
class Example1s(Example1):
    """Example1s: Example1 with its inputs scrambled by a random orthogonal matrix."""

    scrambled = True


@DATASETS.register("example2s")
class Example2s(Example2):
    """Example2s: Example2 with its inputs scrambled by a random orthogonal matrix."""

    scrambled = True


@DATASETS.register("example3s")
class Example3s(Example3):
    """Example3s: Example3 with its inputs scrambled by a random orthogonal matrix."""

    scrambled = True
