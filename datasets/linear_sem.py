"""The IRM paper's synthetic linear structural equation model (its ChainEquationModel)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from invbench.data import Dataset, DatasetFamily, Environment, holdout_split
from invbench.errors import ConfigError
from invbench.hparams import HParam
from invbench.registry import DATASETS
from invbench.tasks import Task


@DATASETS.register("linear_sem")
class LinearSEM(DatasetFamily):
    """Linear SEM of the IRM paper: causes x -> target y -> effects z, noise scaled per env.

    Arjovsky et al. (2019), section 5.1. With sigma the environment's multiplier and d the
    block dimension:
      h ~ N(0, sigma^2), x = h W_hx + N(0, sigma^2),
      y = x W_xy + h W_hy + noise_y,  z = y W_yz + h W_hz + noise_z,
    where y_noise="sigma" (the code's hetero=1) gives noise_y ~ N(0, sigma^2), noise_z ~ N(0, 1)
    and y_noise="unit" gives noise_y ~ N(0, 1), noise_z ~ N(0, sigma^2). Fully observed:
    W_hx = I, W_hy = W_hz = 0; hidden confounder: each ~ randn / (2d). Weights W_xy, W_yz are I
    ("unit") or randn / (2d) ("gaussian"). Inputs [x, z] are right-multiplied by an orthogonal
    matrix when scrambled. The target is the sum of y's d coordinates. The metrics
    causal_error and noncausal_error compare the linear model's coefficients, mapped back to
    the original coordinates, with the true ones (x: the row sums of W_xy; z: 0).

    The paper's names: F/P = hidden False/True; y-noise sigma = the code's hetero=1; S/U =
    scramble True/False. Its IRM trains on sigma 0.2 and 2 (our default test environment
    is sigma=5), while its ERM row is least squares pooled over all three environments
    (no test environment). Fully observed, its population errors are (S / (S + 1))^2 ~ .82
    (y-noise sigma) and 1 / (S + 1)^2 ~ .009 (y-noise 1), S the mean of sigma^2 (9.68).
    """

    task = "regression"
    model = "linear_nobias"  # the paper's least squares has no intercept
    options = {
        "dim": HParam(5, low=1, high=1000, help="dimension of each block (x and z)"),
        "hidden": HParam(False, help="hidden confounder h (P) instead of fully observed (F)"),
        "y_noise": HParam("sigma", choices=("sigma", "unit"),
                          help="which variable carries the environment's noise scale"),
        "scramble": HParam(False, help="right-multiply the inputs by a random orthogonal matrix (S)"),
        "weights": HParam("unit", choices=("unit", "gaussian"), help="W_xy and W_yz"),
        "env_sigmas": HParam((0.2, 2.0, 5.0), help="noise multiplier of each environment"),
        "n_per_env": HParam(1000, low=2, high=10_000_000, help="samples per environment"),
    }
    protocol = "linear-sem"  # its values: invbench.paper_protocols
    default_test_envs = (2,)  # IRM trains on sigma 0.2 and 2 and is tested on sigma 5
    oracle = "the effects z shuffled across rows in every environment, so that only the causes x predict y"

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        sigmas = options["env_sigmas"]
        if len(sigmas) < 2 or any(s <= 0 for s in sigmas):
            raise ConfigError(f"linear_sem: env_sigmas needs at least two positive values; got {sigmas}")

    @classmethod
    def env_names(cls, options: Mapping[str, Any]) -> list[str]:
        return [f"sigma={s:g}" for s in options["env_sigmas"]]

    def build(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
              data_dir: str | None) -> Dataset:
        return self._build(options, data_seed, holdout_fraction, oracle=False)

    def build_oracle(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float,
                     data_dir: str | None) -> Dataset:
        """Every environment with its effects z shuffled across rows (before any scrambling):
        least squares on it estimates the causal coefficients, the reference for the errors."""
        return self._build(options, data_seed, holdout_fraction, oracle=True)

    def _build(self, options: Mapping[str, Any], data_seed: int, holdout_fraction: float, oracle: bool) -> Dataset:
        from invbench.hparams import seed_hash

        d = options["dim"]
        # One seeded stream per purpose: the scrambled and unscrambled variants share their
        # weights and samples (only the rotation differs), and a new environment leaves the
        # others unchanged.
        stream = lambda *parts: torch.Generator().manual_seed(seed_hash("linear_sem", data_seed, *parts))
        weights = stream("weights")
        randn = lambda gen, *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
        scale = 2 * d  # the code's "/ dim", dim being the total input dimension
        eye, zeros = torch.eye(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
        if options["weights"] == "unit":
            w_xy, w_yz = eye, eye
        else:
            w_xy, w_yz = randn(weights, d, d) / scale, randn(weights, d, d) / scale
        if options["hidden"]:
            w_hx, w_hy, w_hz = (randn(weights, d, d) / scale for _ in range(3))
        else:
            w_hx, w_hy, w_hz = eye, zeros, zeros
        scramble = (torch.linalg.qr(randn(stream("scramble"), 2 * d, 2 * d))[0] if options["scramble"]
                    else torch.eye(2 * d, dtype=torch.float64))
        n = options["n_per_env"]
        envs = []
        for i, sigma in enumerate(options["env_sigmas"]):
            gen = stream("env", i)
            h = randn(gen, n, d) * sigma
            x = h @ w_hx + randn(gen, n, d) * sigma
            y_scale, z_scale = (sigma, 1.0) if options["y_noise"] == "sigma" else (1.0, sigma)
            y = x @ w_xy + h @ w_hy + randn(gen, n, d) * y_scale
            z = y @ w_yz + h @ w_hz + randn(gen, n, d) * z_scale
            if oracle:  # its own stream: the rest of the data is the usual data
                z = z[torch.randperm(n, generator=stream("oracle", i))]
            inputs = (torch.cat([x, z], dim=1) @ scramble).float()
            target = y.sum(dim=1).float()
            envs.append(Environment(f"sigma={sigma:g}", holdout_split(inputs, target, holdout_fraction,
                                                                        stream("holdout", i)),
                                    info={"sigma": sigma}))
        true_w = torch.cat([w_xy.sum(dim=1), torch.zeros(d, dtype=torch.float64)])
        return Dataset(
            envs=envs, task=Task("regression"), input_shape=(2 * d,), n_outputs=1,
            source={"name": "synthetic", "location": "linear_sem", "n_images": n * len(envs)},
            metadata={"true_coefficients": true_w.tolist(), "oracle": oracle},
            extra_metrics=lambda model: coefficient_errors(model, true_w, scramble),
        )


def coefficient_errors(model: torch.nn.Module, true_w: torch.Tensor, scramble: torch.Tensor) -> dict[str, float]:
    """Mean squared coefficient errors on the causal (true != 0) and non-causal coordinates."""
    coefficients = getattr(model, "coefficients", None)
    if coefficients is None:
        return {}
    w_hat = scramble.to(coefficients.device) @ coefficients.detach().double().reshape(-1)
    err = (w_hat.cpu() - true_w) ** 2
    causal = true_w != 0
    return {"causal_error": err[causal].mean().item(), "noncausal_error": err[~causal].mean().item()}
