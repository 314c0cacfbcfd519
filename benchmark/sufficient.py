"""Training on sufficient statistics: an exact shortcut for squared-error linear models.

For a model whose output is a linear function of its input with no intercept (x M) and the
squared error, an environment's mean loss is

    R(M) = (1/n) ||X M - y||^2 = (1/n) ||T_x M - t_y||^2

where [X y] = Q T is a thin QR factorisation: T = [T_x t_y] has d + 1 rows and T^T T equals
[X y]^T [X y], the environment's second moments. The loss, and so every derivative of it
with respect to the parameters or to a dummy scale of the output, depends on the examples
only through those moments. Scaled by sqrt((d + 1) / n), the d + 1 rows of T have the same
*mean* loss as the n examples for every M: a method whose objective uses only each
environment's mean loss (``Method.sufficient_statistics_problem``) trains on d + 1 rows
instead of n. On the IRM paper's SEMs (n = 1,000, d = 10) a step does 91 times less work.

With an intercept (x M + b, and dummy shifts of the output), the loss is a quadratic
function of z = (x, y) with a constant term, and the rows must keep the constant 1 that
multiplies b. The symmetric "sigma points" z = mu +- sqrt(k) t_j (j = 1..k, k = d + 1; mu
the mean of z, t_j the rows of a factor T with T^T T the covariance of z) do: their mean is
mu and their covariance that of the examples, so the mean of every quadratic function of z,
the loss included, is the examples' own. 2 (d + 1) rows: 22 instead of the linear unit
tests' 10,000 per environment.

The numbers equal training on the examples up to float rounding, not bit for bit, so the
choice is part of a run's identity (``RunSpec.train_data``). Evaluation always uses the
examples.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from invbench.errors import ConfigError

if TYPE_CHECKING:
    import torch

EXAMPLES = "examples"
SUFFICIENT_STATISTICS = "sufficient_statistics"
TRAIN_DATA = (EXAMPLES, SUFFICIENT_STATISTICS)

# Models whose output is x M: a linear map of the (flattened) input with no intercept.
THROUGH_ORIGIN_MODELS = ("feature_matrix", "linear_nobias")
# Models whose output is x M + b.
AFFINE_MODELS = ("linear", "linear_torch_init")


def check_train_data(value: str, *, method: str, method_cls: type, hparams: dict, model: str, task: str,
                     batch_size: int) -> None:
    """ConfigError unless ``value`` is one of TRAIN_DATA and, for sufficient statistics, the
    run is one where they are exact: squared error, a linear model, full batch, and a
    method that uses only each environment's mean loss (``Method.sufficient_statistics_problem``)."""
    if value not in TRAIN_DATA:
        raise ConfigError(f"train_data must be one of {', '.join(TRAIN_DATA)}; got {value!r}")
    if value == EXAMPLES:
        return
    problems = []
    if task != "regression":
        problems.append(f"the task is {task}, and only the squared error of a regression is exact on moments")
    if model not in THROUGH_ORIGIN_MODELS + AFFINE_MODELS:
        problems.append(f"model {model!r} is not linear in its input "
                        f"(allowed: {', '.join(THROUGH_ORIGIN_MODELS + AFFINE_MODELS)})")
    if batch_size != 0:
        problems.append(f"batch_size is {batch_size}; sufficient statistics summarise a whole environment "
                        f"(batch_size 0, full batch)")
    problem = method_cls.sufficient_statistics_problem(hparams)
    if problem is not None:
        problems.append(f"method {method!r} {problem}")
    if problems:
        raise ConfigError(f"train_data={SUFFICIENT_STATISTICS!r} is not exact for this run: " + "; ".join(problems))


def compress(x: "torch.Tensor", y: "torch.Tensor", intercept: bool = False) -> tuple["torch.Tensor", "torch.Tensor"]:
    """An environment's examples x (R, n, ...) and targets y (R, n) as few rows per run with
    the same mean squared error for every x M (d + 1 rows), or with ``intercept`` for every
    x M + b (2 (d + 1) sigma points); the data unchanged when they are no more rows than that."""
    import torch

    runs, n = y.shape[0], y.shape[1]
    flat = x.reshape(runs, n, -1)
    d = flat.shape[-1]
    k = d + 1
    if n <= (2 * k if intercept else k):
        return x, y
    # float64: the moments of n examples, rounded once at the end
    joined = torch.cat([flat.double(), y.double().unsqueeze(-1)], dim=-1)  # (R, n, k)
    if intercept:
        mean = joined.mean(dim=1, keepdim=True)  # (R, 1, k)
        factor = torch.linalg.qr(joined - mean, mode="r").R / math.sqrt(n)  # T^T T: the covariance
        spread = factor * math.sqrt(k)
        rows = torch.cat([mean + spread, mean - spread], dim=1)  # (R, 2k, k)
    else:
        rows = torch.linalg.qr(joined, mode="r").R * math.sqrt(k / n)  # (R, k, k)
    return rows[..., :d].to(x.dtype).reshape(runs, rows.shape[1], *x.shape[2:]), rows[..., d].to(y.dtype)
