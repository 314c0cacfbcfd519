"""What a method is: an objective over per-environment batches, for a pack of runs.

A method never owns the device, the files or the loop; it sees R runs at once (R = 1 for a
single run). Every tensor it is given or returns has the run dimension first:

- ``batches``: one ``(x, y)`` per training environment, x of shape (R, n, ...) and y (R, n);
- ``model``: an ``invbench.packed.PackedModel``: ``model(x)`` gives outputs (R, n, out),
  ``model.features(x)`` and ``model.classify(z)`` split it into featurizer and classifier;
- hyperparameters: ``self.hp[name]`` for a value every run of the pack shares (choices,
  flags), ``self.per_run(name)`` for a number that may differ between runs, as a (R,) tensor;
- the result: an ``Objective`` of per-run tensors.

Two paths.

The simple path: define ``objective(model, batches, step)``. The shared ``train_step``
composes each run's loss as

    loss_r = (risk_r + l2_r * sum ||theta_r||^2 + penalty_weight_r * penalty_r) / divide_by_r

(so the IRM code's "divide the whole loss by the penalty weight" covers the l2 term too, as
it does there), differentiates the sum over runs (the runs are independent, so each run
gets its own gradient) and takes one Adam step.

The explicit path, for methods that need per-environment gradients, features, parameters
of their own or an update of their own: override ``update`` (the default one is the simple
path above) and use the helpers ``env_gradients`` and ``model.features`` /
``model.classify``; parameters of the method's own go in ``own_parameters`` and are
trained by the same optimizer and saved in the checkpoints.

A method's state (group DRO's weights) is a dict of tensors with the run dimension first:
the checkpoints of a pack's runs are written one run at a time. State whose shape depends
on the model is created in ``bind(model)``, which the trainer calls before any step or resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch

from invbench.errors import ConfigError
from invbench.hparams import HParam
from invbench.tasks import Task

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs (R, n, ...), labels (R, n)) of one training environment


@dataclass
class Objective:
    """Per-run quantities of one step; every tensor has the run dimension R first."""

    risk: torch.Tensor  # (R,): the method's risk term (ERM: mean of the environments' losses)
    penalty: torch.Tensor | None = None  # (R,): unweighted penalty, if the method has one
    penalty_weight: torch.Tensor | float = 0.0  # (R,) or one number for all runs
    divide_by: torch.Tensor | float = 1.0
    env_losses: torch.Tensor | None = None  # (E, R): per-environment mean losses, for logs
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (R,), for logs


class RunHParams:
    """The hyperparameters of a pack's runs: one mapping per run, all with the same names."""

    def __init__(self, per_run: Sequence[Mapping[str, Any]]):
        self.runs = [dict(hp) for hp in per_run]
        names = set(self.runs[0])
        if any(set(hp) != names for hp in self.runs):
            raise ConfigError("the runs of a pack must have the same hyperparameter names")

    def __len__(self) -> int:
        return len(self.runs)

    def __contains__(self, name: str) -> bool:
        return name in self.runs[0]

    def __getitem__(self, name: str) -> Any:
        """The value that every run shares; an error when the runs differ in it."""
        values = [hp[name] for hp in self.runs]
        if any(value != values[0] for value in values[1:]):
            raise ConfigError(f"hyperparameter {name} differs between the runs of a pack "
                              f"({sorted(set(map(repr, values)))}): read it with per_run({name!r})")
        return values[0]

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def values(self, name: str) -> list[Any]:
        return [hp[name] for hp in self.runs]


class Method:
    """Base class of registered methods. The first docstring line is the one-line description."""

    name: ClassVar[str] = ""
    hparams: ClassVar[dict[str, HParam]] = {}
    # True: the runs train and validate on the dataset's oracle data, where the spurious
    # signal is removed (invbench.data.DatasetFamily.build_oracle), not on its usual data.
    trains_on_oracle_data: ClassVar[bool] = False
    # True: the objective uses the training data only through each environment's mean loss
    # (and its derivatives), so it may train on sufficient statistics (invbench.sufficient).
    exact_on_sufficient_statistics: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "presets", None):  # the old home of a paper's tuned values: refuse, not ignore
            raise ConfigError(f"method class {cls.__qualname__} sets presets: a paper's tuned values belong in "
                              f"a protocol (invbench.protocol.Protocol) with method_hparams for this method")

    def __init__(self, hparams: Mapping[str, Any] | Sequence[Mapping[str, Any]], n_envs: int, task: Task,
                 env_sizes: Sequence[int] | None = None):
        """``hparams``: one mapping per run of the pack (a single mapping: one run)."""
        per_run = [hparams] if isinstance(hparams, Mapping) else list(hparams)
        if not per_run:
            raise ConfigError("a method needs at least one run")
        self.hp = RunHParams(per_run)
        self.runs = len(per_run)
        self.n_envs = n_envs
        self.task = task
        # Training examples per environment (group DRO's generalisation adjustment uses them).
        self.env_sizes = list(env_sizes) if env_sizes is not None else None
        self.device = torch.device("cpu")

    def per_run(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A numeric hyperparameter of every run, as a (R,) tensor on the method's device."""
        return torch.tensor([float(v) for v in self.hp.values(name)], dtype=dtype, device=self.device)

    # The simple path -------------------------------------------------------------------------

    def objective(self, model: Any, batches: Sequence[Batch], step: int) -> Objective:
        raise NotImplementedError

    # The explicit path -----------------------------------------------------------------------

    def update(self, model: Any, batches: Sequence[Batch], step: int, optimizer: Any, l2: torch.Tensor,
               active: torch.Tensor) -> "StepResult":
        """One training step of the runs where ``active`` (bool, (R,)) is true: compose the
        loss, differentiate, reset the optimizer where a run's reset step is due, update.
        Runs whose loss is not finite are not updated: ``StepResult.diverged`` names them."""
        objective = self.objective(model, batches, step)
        loss = compose_loss(objective, model, l2)
        return self.apply(loss, objective, step, optimizer, active)

    def apply(self, loss: torch.Tensor, objective: Objective, step: int, optimizer: Any,
              active: torch.Tensor) -> "StepResult":
        """Differentiate the per-run ``loss`` (R,) and update the active, finite runs."""
        finite = torch.isfinite(loss.detach())
        update = active & finite
        reset = self.optimizer_reset_mask(step)
        if reset is not None:
            optimizer.reset(reset & update)
        optimizer.zero_grad()
        torch.where(update, loss, torch.zeros_like(loss)).sum().backward()
        optimizer.step(update)
        return StepResult(loss.detach(), objective, diverged=active & ~finite)

    def bind(self, model: Any) -> None:
        """Called by the trainer with the pack's model before any step or resume: a method
        whose state's shape depends on the model (Fishr's moving averages of the classifier's
        gradient variances) creates that state here, so a checkpoint's state fits it."""

    def own_parameters(self) -> dict[str, torch.Tensor]:
        """Parameters of the method's own (run dimension first), trained with the model's."""
        return {}

    @staticmethod
    def env_gradients(env_losses: torch.Tensor, params: Mapping[str, torch.Tensor],
                      create_graph: bool = False) -> list[dict[str, torch.Tensor]]:
        """d R_e / d theta for each environment e: one dict per environment of per-run
        gradients (each with the run dimension first; the runs' gradients do not mix)."""
        names = list(params)
        out = []
        for e in range(env_losses.shape[0]):
            grads = torch.autograd.grad(env_losses[e].sum(), [params[n] for n in names],
                                        create_graph=create_graph, retain_graph=True, allow_unused=True)
            out.append({n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(names, grads)})
        return out

    # Schedules and checks --------------------------------------------------------------------

    @classmethod
    def sufficient_statistics_problem(cls, hparams: Mapping[str, Any]) -> str | None:
        """None when runs with these hyperparameters train exactly on each environment's
        sufficient statistics (invbench.sufficient), else why not (after the method's name)."""
        if cls.exact_on_sufficient_statistics:
            return None
        from invbench.registry import METHODS

        exact = [name for name in METHODS.names() if METHODS.get(name).exact_on_sufficient_statistics]
        return f"uses more of the data than each environment's mean loss (methods that do not: {', '.join(exact)})"

    @classmethod
    def shifts_outputs(cls, hparams: Mapping[str, Any]) -> bool:
        """Whether the objective adds a constant to the model's output (IRMv1's dummy shift):
        sufficient statistics must then keep the constant, as for a model with an intercept."""
        return False

    @classmethod
    def check_hparams(cls, hparams: Mapping[str, Any], steps: int) -> list[str]:
        """Valid but suspicious combinations, as messages for a warning (none by default)."""
        return []

    def optimizer_reset_mask(self, step: int) -> torch.Tensor | None:
        """Which runs re-create their optimizer before this step's update (DomainBed's
        anneal), as a bool (R,) tensor; None when no run ever does."""
        return None

    # Method state (group DRO's weights): saved and restored with the training checkpoint,
    # every tensor with the run dimension first.
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        pass

    def to(self, device: torch.device) -> "Method":
        self.device = torch.device(device)
        return self

    # Helpers for subclasses ------------------------------------------------------------------

    @staticmethod
    def env_logits(model: Any, batches: Sequence[Batch]) -> list[torch.Tensor]:
        """The model's outputs (R, n_e, out) on each environment's batch."""
        return [model(x) for x, _ in batches]

    def env_losses(self, logits: Sequence[torch.Tensor], batches: Sequence[Batch]) -> torch.Tensor:
        """(E, R): each run's mean loss on each environment."""
        return torch.stack([self.task.run_losses(out, y) for out, (_, y) in zip(logits, batches)])


@dataclass
class StepResult:
    loss: torch.Tensor  # (R,) the composed loss of each run (not finite where it diverged)
    objective: Objective
    diverged: torch.Tensor  # (R,) bool: active runs whose loss was not finite (not updated)


def compose_loss(objective: Objective, model: Any, l2: torch.Tensor) -> torch.Tensor:
    """(risk + l2 * sum ||theta||^2 + weight * penalty) / divide_by, per run."""
    loss = objective.risk
    if bool((l2 != 0).any()):
        squares = sum(p.pow(2).flatten(1).sum(1) for p in model.packed_parameters().values())
        loss = loss + l2.to(loss.dtype) * squares
    if objective.penalty is not None:
        loss = loss + _in_dtype(objective.penalty_weight, loss) * objective.penalty
    return loss / _in_dtype(objective.divide_by, loss)


def _in_dtype(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """A per-run weight kept in float64 (for the logs), used in the loss's own dtype."""
    return value.to(like.dtype) if isinstance(value, torch.Tensor) else value
