"""Training on sufficient statistics: an exact shortcut for squared-error linear models.

For a model whose output is a linear function of its input with no intercept (x M) and the
squared error, an environment's mean loss is

    R(M) = (1/n) ||X M - y||^2 = (1/n) ||T_x M - t_y||^2

where [X y] = Q T is a thin QR factorisation: T = [T_x t_y] has d + 1 rows and T^T T equals
[X y]^T [X y], the environment's second moments. The loss, and so every derivative of it
with respect to the parameters or to a dummy scale of the output, depends on the examples
only through those moments. Scaled by sqrt((d + 1) / n), the d + 1 rows of T have the same
*mean* loss as the n examples for every M: a method whose objective uses only each
environment's mean loss (``Method.exact_on_sufficient_statistics``) trains on d + 1 rows
instead of n. On the IRM paper's SEMs (n = 1,000, d = 10) a step does 91 times less work.

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


def check_train_data(value: str, *, method: str, method_cls: type, model: str, task: str,
                     batch_size: int) -> None:
    """ConfigError unless ``value`` is one of TRAIN_DATA and, for sufficient statistics, the
    run is one where they are exact: squared error, a model through the origin, full batch,
    and a method that uses only each environment's mean loss."""
    if value not in TRAIN_DATA:
        raise ConfigError(f"train_data must be one of {', '.join(TRAIN_DATA)}; got {value!r}")
    if value == EXAMPLES:
        return
    problems = []
    if task != "regression":
        problems.append(f"the task is {task}, and only the squared error of a regression is exact on moments")
    if model not in THROUGH_ORIGIN_MODELS:
        problems.append(f"model {model!r} is not linear through the origin (allowed: {', '.join(THROUGH_ORIGIN_MODELS)})")
    if batch_size != 0:
        problems.append(f"batch_size is {batch_size}; sufficient statistics summarise a whole environment "
                        f"(batch_size 0, full batch)")
    if not getattr(method_cls, "exact_on_sufficient_statistics", False):
        from invbench.registry import METHODS

        exact = [n for n in METHODS.names() if getattr(METHODS.get(n), "exact_on_sufficient_statistics", False)]
        problems.append(f"method {method!r} uses more of the data than each environment's mean loss "
                        f"(methods that do not: {', '.join(exact)})")
    if problems:
        raise ConfigError(f"train_data={SUFFICIENT_STATISTICS!r} is not exact for this run: " + "; ".join(problems))


def compress(x: "torch.Tensor", y: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """An environment's examples x (R, n, ...) and targets y (R, n) as d + 1 rows per run with
    the same mean squared error for every x M (the data unchanged when n <= d + 1)."""
    import torch

    runs, n = y.shape[0], y.shape[1]
    flat = x.reshape(runs, n, -1)
    d = flat.shape[-1]
    if n <= d + 1:
        return x, y
    # float64: the moments of n examples, rounded once at the end
    joined = torch.cat([flat.double(), y.double().unsqueeze(-1)], dim=-1)  # (R, n, d + 1)
    factor = torch.linalg.qr(joined, mode="r").R * math.sqrt((d + 1) / n)  # (R, d + 1, d + 1)
    rows = factor.to(x.dtype)
    return rows[..., :d].reshape(runs, d + 1, *x.shape[2:]), factor[..., d].to(y.dtype)
