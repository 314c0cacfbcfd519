"""One run's training, free of files: the runner decides what is written and when.

A Trainer goes through five stages:
  setup     Trainer(spec): the dataset, model, method, optimizer and minibatch sampler,
            seeded from the spec alone
  resume    load a checkpoint's state (model, optimizer, method, RNG, step)
  step      one update of the model
  evaluate  the record of the current step: every environment's split metrics, the
            averages of the training window since the last record, extra metrics
  finish    what the done record says about the training (device, torch, data source)

The record at step s describes the model after s updates (the IRM code's "step 500 of
501" is our step 500). Records are due at every multiple of eval_every and at the last
step (``evaluation_steps``).
"""

from __future__ import annotations

import io
import time
from typing import Any, Sequence

import torch

from invbench.data import TRAIN, Dataset
from invbench.devices import resolve_device
from invbench.errors import ConfigError
from invbench.hparams import seed_hash
from invbench.method import Method
from invbench.models import build_model
from invbench.registry import DATASETS, METHODS
from invbench.spec import RunSpec

EVAL_CHUNK = 8192



def build_dataset(spec: RunSpec) -> Dataset:
    family = DATASETS.get(spec.dataset)()
    return family.build(spec.dataset_options, spec.trial, spec.holdout_fraction, spec.data_dir)


def evaluation_steps(spec: RunSpec, up_to: int) -> list[int]:
    """The steps that have a record, from 0 through ``up_to``."""
    return [s for s in range(0, min(up_to, spec.steps) + 1) if s % spec.eval_every == 0 or s == spec.steps]


def check_batch_sizes(dataset: Dataset, train_envs: Sequence[int], batch_size: int) -> None:
    """An environment smaller than the batch is an error, never a hang."""
    for index in train_envs:
        env = dataset.envs[index]
        if batch_size > env.size(TRAIN):
            raise ConfigError(
                f"environment {index} ({env.name}) has {env.size(TRAIN)} training examples, fewer than "
                f"batch_size={batch_size}; use batch_size <= {env.size(TRAIN)} or 0 for full batch"
            )


class MinibatchSampler:
    """Stateless: the batch of a step depends only on (seed, env, step), so resuming is exact.

    Each epoch is a fresh seeded permutation of the environment; the last incomplete batch
    of an epoch is dropped.
    """

    def __init__(self, dataset: Dataset, train_envs: Sequence[int], batch_size: int, seed: int):
        self.envs = [dataset.envs[i] for i in train_envs]
        self.batch_size = batch_size
        self.seed = seed
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for index, env in enumerate(self.envs):
            x, y = env.splits[TRAIN]
            if self.batch_size == 0:
                out.append((x, y))
                continue
            per_epoch = len(y) // self.batch_size
            epoch, position = divmod(step, per_epoch)
            perm = self._perms.get((index, epoch))
            if perm is None:
                gen = torch.Generator().manual_seed(seed_hash("batches", self.seed, index, epoch))
                perm = torch.randperm(len(y), generator=gen).to(y.device)
                self._perms = {k: v for k, v in self._perms.items() if k[0] != index}
                self._perms[(index, epoch)] = perm
            rows = perm[position * self.batch_size:(position + 1) * self.batch_size]
            out.append((x[rows], y[rows]))
        return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset) -> dict[str, dict[str, dict[str, float]]]:
    model.eval()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for env in dataset.envs:
        out[env.name] = {}
        for split, (x, y) in env.splits.items():
            totals: dict[str, float] = {}
            for start in range(0, len(y), EVAL_CHUNK):
                logits = model(x[start:start + EVAL_CHUNK])
                for key, value in dataset.task.metrics(logits, y[start:start + EVAL_CHUNK]).items():
                    totals[key] = totals.get(key, 0.0) + value
            out[env.name][split] = {k: v / max(len(y), 1) for k, v in totals.items()}
    model.train()
    return out


def make_optimizer(model: torch.nn.Module, hparams: dict) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])


class Trainer:
    """The training state of one spec. ``steps_done`` counts the updates made so far."""

    def __init__(self, spec: RunSpec, device: torch.device | None = None):
        """Setup: everything is seeded from the spec, so two setups of one spec train alike."""
        self._clock = time.perf_counter()
        self._elapsed_before = 0.0
        self.spec = spec
        self.device = device if device is not None else resolve_device(spec.device)
        self.dataset = build_dataset(spec).to(self.device)
        self.train_envs = [i for i in range(len(self.dataset.envs)) if i not in spec.test_envs]
        self.hparams = dict(spec.hparams)
        check_batch_sizes(self.dataset, self.train_envs, self.hparams["batch_size"])
        seed = seed_hash("run", spec.trial, spec.hparams_seed)
        torch.manual_seed(seed)
        self.model = build_model(spec.model, self.dataset.input_shape, self.dataset.n_outputs,
                                 self.hparams).to(self.device)
        self.method: Method = METHODS.get(spec.method)(
            self.hparams, len(self.train_envs), self.dataset.task,
            env_sizes=[self.dataset.envs[i].size(TRAIN) for i in self.train_envs]).to(self.device)
        self.optimizer = make_optimizer(self.model, self.hparams)
        self.sampler = MinibatchSampler(self.dataset, self.train_envs, self.hparams["batch_size"], seed)
        self._reset_step = self.method.optimizer_reset_step()
        self.steps_done = 0
        self._evaluated_at: int | None = None  # the step of the latest record (made or restored)
        self._window: dict[str, float] = {}
        self._window_steps = 0

    # Describing ---------------------------------------------------------------------------

    def dataset_info(self) -> dict[str, Any]:
        """dataset.json: the data source, environment names and sizes."""
        dataset = self.dataset
        return {
            "source": dataset.source, "env_names": dataset.env_names, "task": dataset.task.kind,
            "test_envs": list(self.spec.test_envs), "train_envs": self.train_envs,
            "env_sizes": {env.name: {s: len(t[1]) for s, t in env.splits.items()} for env in dataset.envs},
            "env_info": {env.name: env.info for env in dataset.envs},
        }

    def elapsed(self) -> float:
        """Seconds of training, earlier attempts included."""
        return self._elapsed_before + time.perf_counter() - self._clock

    @property
    def finished(self) -> bool:
        return self.steps_done >= self.spec.steps

    @property
    def evaluation_due(self) -> bool:
        """Whether the current step needs a record that it does not have yet."""
        step = self.steps_done
        return (step % self.spec.eval_every == 0 or step == self.spec.steps) and step != self._evaluated_at

    # Stages -------------------------------------------------------------------------------

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (``checkpoint_bytes``): the record of its step exists."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        torch.set_rng_state(state["rng"])
        self.steps_done = self._evaluated_at = state["step"]
        self._elapsed_before = state["elapsed"]

    def step(self) -> None:
        """One update. Raises FloatingPointError when the loss is NaN or infinite (diverged)."""
        step = self.steps_done
        objective = self.method.objective(self.model, self.sampler.batches(step), step)
        loss = objective.risk
        l2 = self.hparams["l2"]
        if l2:
            loss = loss + l2 * sum(p.pow(2).sum() for p in self.model.parameters())
        if objective.penalty is not None:
            loss = loss + objective.penalty_weight * objective.penalty
        loss = loss / objective.divide_by
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}")
        if self._reset_step is not None and step == self._reset_step:
            self.optimizer = make_optimizer(self.model, self.hparams)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._accumulate(objective, loss)
        self.steps_done += 1

    def evaluate(self) -> dict[str, Any]:
        """The record of the current step; starts a new training window."""
        record: dict[str, Any] = {"step": self.steps_done, "envs": evaluate(self.model, self.dataset)}
        if self._window_steps:
            record["train"] = {k: v / self._window_steps for k, v in self._window.items()}
        if self.dataset.extra_metrics is not None:
            record["extra"] = self.dataset.extra_metrics(self.model)
        self._window, self._window_steps = {}, 0
        self._evaluated_at = self.steps_done
        return record

    def checkpoint_bytes(self) -> bytes:
        """Everything ``resume`` needs, at the current step (taken right after its record)."""
        buffer = io.BytesIO()
        torch.save({
            "run_id": self.spec.run_id, "step": self.steps_done, "elapsed": self.elapsed(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(), "rng": torch.get_rng_state(),
        }, buffer)
        return buffer.getvalue()

    def finish(self) -> dict[str, Any]:
        """The training's part of the done record."""
        return {"steps": self.spec.steps, "wall_time": self.elapsed(), "device": str(self.device),
                "torch": torch.__version__, "source": self.dataset.source}

    def _accumulate(self, objective: Any, loss: torch.Tensor) -> None:
        values = {"loss": loss.item(), "risk": objective.risk.item(), "penalty_weight": objective.penalty_weight}
        if objective.penalty is not None:
            values["penalty"] = objective.penalty.item()
        if objective.env_losses is not None:
            for i, value in enumerate(objective.env_losses.tolist()):
                values[f"env{i}_loss"] = value
        values.update(objective.logs)
        for key, value in values.items():
            self._window[key] = self._window.get(key, 0.0) + float(value)
        self._window_steps += 1


# TEMPORARY: replaced by the lead
def seconds_per_pack_step(specs: Sequence[RunSpec], steps: int = 3) -> float:
    """Mean wall seconds of one training step of the pack ``specs`` (after one warm-up
    step), on the specs' device with the current torch thread setting. Until packs train as
    one computation, a pack's step is one step of each of its runs."""
    trainers = [Trainer(spec) for spec in specs]
    for trainer in trainers:
        trainer.step()  # warm-up: first-call allocations and lazy initialisation
    start = time.perf_counter()
    for _ in range(steps):
        for trainer in trainers:
            trainer.step()
    return (time.perf_counter() - start) / steps
