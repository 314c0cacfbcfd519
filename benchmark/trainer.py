"""The training of a pack of runs, free of files: the runner decides what is written and when.

A pack is R compatible specs (invbench.packing) trained as one computation: their models'
parameters stacked along a leading run dimension (invbench.packed), their hyperparameters
as per-run tensors, one backward pass and one Adam update (invbench.optim) per step. R = 1
is a single run. Runs never mix, so a run's numbers do not depend on its pack-mates.

A Trainer goes through five stages:
  setup     Trainer(specs): datasets (each distinct one built once), models (each seeded
            from its own spec, exactly as alone), method, optimizer and minibatch samplers
  resume    load one run's checkpoint state (model, optimizer, method, step); every run of
            a pack resumes at the same step (the runner groups them so)
  step      one update of every active run (``train_step``, shared with the benchmarks)
  evaluate  one record per active run: every environment's split metrics, the averages of
            the training window since the last record, extra metrics
  finish    what the done record says about a run's training (device, torch, data source)

A run whose loss becomes NaN or infinite stops alone: it is marked failed (``failures``)
and never updated again, while its pack-mates go on.

The record at step s describes the model after s updates (the IRM code's "step 500 of
501" is our step 500). Records are due at every multiple of eval_every and at the last
step (``evaluation_steps``).
"""

from __future__ import annotations

import io
import statistics
import time
from typing import Any, Sequence

import torch

from invbench.data import TRAIN, Dataset
from invbench.devices import resolve_device
from invbench.errors import ConfigError
from invbench.hparams import seed_hash
from invbench.method import Method, StepResult
from invbench.models import build_model
from invbench.optim import PackedAdam
from invbench.packed import PackedModel
from invbench.registry import DATASETS, METHODS
from invbench.spec import RunSpec
from invbench.sufficient import AFFINE_MODELS, SUFFICIENT_STATISTICS, check_train_data, compress

EVAL_CHUNK = 8192
CHECKPOINT_FORMAT = 2  # 2: one run of a pack (packed Adam state); 1 was torch.optim.Adam's



def build_dataset(spec: RunSpec, data_seed: int | None = None) -> Dataset:
    """The spec's data (its oracle data for the oracle method), for its trial or ``data_seed``."""
    family = DATASETS.get(spec.dataset)()
    build = family.build_oracle if spec.uses_oracle_data else family.build
    return build(spec.dataset_options, spec.trial if data_seed is None else data_seed, spec.holdout_fraction,
                 spec.data_dir)


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
    """Stateless: the rows of a step depend only on (seed, env, step), so resuming is exact.

    Each epoch is a fresh seeded permutation of the environment; the last incomplete batch
    of an epoch is dropped. ``rows(step)`` gives one index tensor per environment (None:
    full batch)."""

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int, device: torch.device | None = None):
        self.sizes = list(sizes)
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def rows(self, step: int) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for index, size in enumerate(self.sizes):
            if self.batch_size == 0:
                out.append(None)
                continue
            per_epoch = size // self.batch_size
            epoch, position = divmod(step, per_epoch)
            perm = self._perms.get((index, epoch))
            if perm is None:
                gen = torch.Generator().manual_seed(seed_hash("batches", self.seed, index, epoch))
                perm = torch.randperm(size, generator=gen).to(self.device or "cpu")
                self._perms = {k: v for k, v in self._perms.items() if k[0] != index}
                self._perms[(index, epoch)] = perm
            out.append(perm[position * self.batch_size:(position + 1) * self.batch_size])
        return out


def train_step(model: PackedModel, method: Method, optimizer: PackedAdam, batches: Sequence[tuple],
               step: int, l2: torch.Tensor, active: torch.Tensor) -> StepResult:
    """One update of every active run of a pack: the step of the runner, the speed
    benchmarks and the tests alike (the method's ``update``: the simple path composes and
    differentiates its objective, the explicit path does what the method says)."""
    return method.update(model, batches, step, optimizer, l2, active)


class PackData:
    """The pack's data: per environment and split, inputs (R, n, ...) and labels (R, n).

    When every run trains on one dataset (one trial), the tensors are expanded views of
    that dataset's (stride 0 along the runs: no copy); otherwise each run's own data are
    stacked (the runs' datasets must then have the same sizes)."""

    def __init__(self, datasets: Sequence[Dataset]):
        self.runs = len(datasets)
        first = datasets[0]
        self.shared = all(d is first for d in datasets)
        self.env_names = first.env_names
        self.splits: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        for e, env in enumerate(first.envs):
            splits = {}
            for split in env.splits:
                if self.shared:
                    x, y = env.splits[split]
                    splits[split] = (x.expand(self.runs, *x.shape), _labels(y).expand(self.runs, len(y)))
                    continue
                parts = [d.envs[e].splits.get(split) for d in datasets]
                shapes = {(tuple(p[0].shape), tuple(p[1].shape)) if p is not None else None for p in parts}
                if len(shapes) != 1 or None in shapes:
                    raise ConfigError(f"the runs of a pack have different data shapes in environment "
                                      f"{env.name} ({split}): they cannot train as one pack; use pack_size 1")
                splits[split] = (torch.stack([p[0] for p in parts]), torch.stack([_labels(p[1]) for p in parts]))
            self.splits.append(splits)

    def batch(self, env: int, rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Environment ``env``'s minibatch: the rows ``rows[r]`` for each run r."""
        x, y = self.splits[env][TRAIN]
        index = torch.stack(list(rows))  # (R, B)
        if self.shared:
            return x[0][index], y[0][index]
        runs = torch.arange(self.runs, device=index.device)[:, None]
        return x[runs, index], y[runs, index]


def _labels(y: torch.Tensor) -> torch.Tensor:
    """Labels as one value per example (a regression target of shape (n, 1) included)."""
    return y.reshape(len(y)) if y.dim() > 1 and y[0].numel() == 1 else y


@torch.no_grad()
def evaluate(model: PackedModel, data: PackData, task: Any) -> list[dict[str, dict[str, dict[str, float]]]]:
    """Every run's metrics on every environment and split: one dict per run of the pack."""
    out: list[dict[str, dict[str, dict[str, float]]]] = [{} for _ in range(data.runs)]
    for name, splits in zip(data.env_names, data.splits):
        for record in out:
            record[name] = {}
        for split, (x, y) in splits.items():
            n = y.shape[1]
            totals: dict[str, torch.Tensor] = {}
            for start in range(0, n, EVAL_CHUNK):
                logits = model(x[:, start:start + EVAL_CHUNK])
                for key, value in task.run_metric_sums(logits, y[:, start:start + EVAL_CHUNK]).items():
                    value = value.double()  # chunks add up in double precision
                    totals[key] = totals[key] + value if key in totals else value
            values = {key: (value / max(n, 1)).tolist() for key, value in totals.items()}
            for r, record in enumerate(out):
                record[name][split] = {key: values[key][r] for key in values}
    return out


class Trainer:
    """The training state of a pack of specs (one spec: a pack of one). ``steps_done``
    counts the updates made so far; every run of a pack is at the same step."""

    def __init__(self, specs: RunSpec | Sequence[RunSpec], device: torch.device | None = None):
        """Setup: every run is seeded from its spec alone, so it starts alike in any pack."""
        self._clock = time.perf_counter()
        self.specs = [specs] if isinstance(specs, RunSpec) else list(specs)
        if not self.specs:
            raise ConfigError("a pack needs at least one spec")
        first = self.specs[0]
        self.spec = first
        self.runs = len(self.specs)
        self._elapsed_before = [0.0] * self.runs
        self.device = device if device is not None else resolve_device(first.device)
        built: dict[tuple[str, int], Dataset] = {}
        for spec in self.specs:
            key = (spec.data_key, spec.trial)
            if key not in built:
                built[key] = build_dataset(spec).to(self.device)
        self.datasets = [built[(spec.data_key, spec.trial)] for spec in self.specs]
        self.dataset = self.datasets[0]
        self.data = PackData(self.datasets)
        self.train_envs = [i for i in range(len(self.dataset.envs)) if i not in first.test_envs]
        self.hparams = [dict(spec.hparams) for spec in self.specs]
        batch_size = self.hparams[0]["batch_size"]
        check_batch_sizes(self.dataset, self.train_envs, batch_size)
        models = []
        for spec, hp in zip(self.specs, self.hparams):
            torch.manual_seed(seed_hash("run", spec.trial, spec.hparams_seed))
            models.append(build_model(spec.model, self.dataset.input_shape, self.dataset.n_outputs, hp))
        self.model = PackedModel(models).to(self.device)
        env_sizes = [self.dataset.envs[i].size(TRAIN) for i in self.train_envs]
        self.method: Method = METHODS.get(first.method)(
            self.hparams, len(self.train_envs), self.dataset.task, env_sizes=env_sizes).to(self.device)
        self.method.bind(self.model)
        self.optimizer = PackedAdam(self._trained_parameters(), lr=self._per_run("lr"),
                                    weight_decay=self._per_run("weight_decay"))
        self.l2 = self._per_run("l2").to(torch.float32)
        self._train_rows = self._sufficient_statistics() if first.train_data == SUFFICIENT_STATISTICS else None
        self.samplers = [MinibatchSampler(env_sizes, batch_size, seed_hash("run", spec.trial, spec.hparams_seed),
                                          self.device) for spec in self.specs]
        self.active = torch.ones(self.runs, dtype=torch.bool, device=self.device)
        self.failures: dict[int, str] = {}  # run index -> why it stopped (diverged)
        self.steps_done = 0
        self._evaluated_at: int | None = None  # the step of the latest records (made or restored)
        self._window: dict[str, torch.Tensor] = {}
        self._window_steps = 0

    def _sufficient_statistics(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each training environment as a few rows with its examples' mean squared error
        (invbench.sufficient): the full batch of every step."""
        first = self.spec
        for hp in self.hparams:
            check_train_data(first.train_data, method=first.method, method_cls=METHODS.get(first.method), hparams=hp,
                             model=first.model, task=self.dataset.task.kind, batch_size=int(hp["batch_size"]))
        # a constant in the loss (an intercept, a dummy shift): rows that keep it
        intercept = first.model in AFFINE_MODELS or METHODS.get(first.method).shifts_outputs(self.hparams[0])
        out = []
        for env in self.train_envs:
            x, y = self.data.splits[env][TRAIN]
            if self.data.shared:  # one dataset: compress it once, expand as the examples are
                rows_x, rows_y = compress(x[:1], y[:1], intercept)
                out.append((rows_x.expand(self.runs, *rows_x.shape[1:]), rows_y.expand(self.runs, rows_y.shape[1])))
            else:
                out.append(compress(x, y, intercept))
        return out

    def _per_run(self, name: str) -> torch.Tensor:
        return torch.tensor([float(hp[name]) for hp in self.hparams], dtype=torch.float64, device=self.device)

    def _trained_parameters(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.packed_parameters())
        params.update({f"method.{name}": p for name, p in self.method.own_parameters().items()})
        return params

    # Describing ---------------------------------------------------------------------------

    def dataset_info(self, run: int = 0) -> dict[str, Any]:
        """dataset.json of run ``run``: the data source, environment names and sizes."""
        dataset = self.datasets[run]
        return {
            "source": dataset.source, "env_names": dataset.env_names, "task": dataset.task.kind,
            "test_envs": list(self.specs[run].test_envs), "train_envs": self.train_envs,
            "env_sizes": {env.name: {s: len(t[1]) for s, t in env.splits.items()} for env in dataset.envs},
            "env_info": {env.name: env.info for env in dataset.envs},
        }

    def elapsed(self, run: int = 0) -> float:
        """Seconds of training of run ``run``, earlier attempts included."""
        return self._elapsed_before[run] + time.perf_counter() - self._clock

    def is_active(self, run: int) -> bool:
        return bool(self.active[run])

    def stop(self, run: int) -> None:
        """Leave run ``run`` out from now on: no update, no record (not a failure)."""
        self.active[run] = False

    @property
    def finished(self) -> bool:
        return self.steps_done >= self.spec.steps or not bool(self.active.any())

    @property
    def evaluation_due(self) -> bool:
        """Whether the current step needs records that it does not have yet."""
        step = self.steps_done
        return (step % self.spec.eval_every == 0 or step == self.spec.steps) and step != self._evaluated_at

    # Stages -------------------------------------------------------------------------------

    def resume(self, state: dict[str, Any], run: int = 0) -> None:
        """Continue run ``run`` from its checkpoint (``checkpoint_bytes``): the record of its
        step exists. Every part is checked before anything is loaded, so a state that does
        not fit raises and leaves the pack as it was."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT} "
                             "(written by an older invbench)")
        if self._evaluated_at is not None and state["step"] != self.steps_done:
            raise ValueError(f"a pack resumes at one step: this one is at {self.steps_done}, "
                             f"the checkpoint at {state['step']}")
        self.model.check_run_state(state["model"])
        self.optimizer.check_run_state(state["optimizer"])
        method_state = self._stacked_method_state(run, state["method"])
        self.model.load_run_state_dict(run, state["model"])
        self.optimizer.load_run_state_dict(run, state["optimizer"])
        self.method.load_state_dict(method_state)
        self.steps_done = self._evaluated_at = state["step"]
        self._elapsed_before[run] = state["elapsed"] - (time.perf_counter() - self._clock)

    def _stacked_method_state(self, run: int, saved: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The method's whole state with run ``run``'s part replaced by ``saved``."""
        current = self.method.state_dict()
        if set(saved) != set(current):
            raise ValueError(f"method state names {sorted(saved)}, expected {sorted(current)}")
        out = {}
        for name, tensor in current.items():
            part = torch.as_tensor(saved[name]).to(device=tensor.device, dtype=tensor.dtype)
            if tuple(part.shape) != tuple(tensor.shape[1:]):
                raise ValueError(f"method state {name} has shape {tuple(part.shape)}, "
                                 f"expected {tuple(tensor.shape[1:])}")
            tensor = tensor.clone()
            tensor[run] = part
            out[name] = tensor
        return out

    def batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every training environment's batch of this step: (x (R, n, ...), y (R, n))."""
        if self._train_rows is not None:  # sufficient statistics: always the same rows
            return list(self._train_rows)
        if self.hparams[0]["batch_size"] == 0:  # full batch: every step the same tensors
            return [self.data.splits[env][TRAIN] for env in self.train_envs]
        rows = [sampler.rows(step) for sampler in self.samplers]  # [run][env]
        return [self.data.batch(env, [rows[r][i] for r in range(self.runs)])
                for i, env in enumerate(self.train_envs)]

    def step(self) -> list[int]:
        """One update of every active run; returns the runs that diverged at this step (their
        loss became NaN or infinite: they stop, with the reason in ``failures``)."""
        step = self.steps_done
        result = train_step(self.model, self.method, self.optimizer, self.batches(step), step, self.l2, self.active)
        diverged = result.diverged.nonzero().flatten().tolist() if bool(result.diverged.any()) else []
        for r in diverged:
            self.failures[r] = f"the loss became {float(result.loss[r])} at step {step}"
        if diverged:
            self.active = self.active & ~result.diverged
        self._accumulate(result)
        self.steps_done += 1
        return diverged

    def evaluate(self) -> list[dict[str, Any] | None]:
        """The records of the current step, one per run (None for a run that stopped);
        starts a new training window."""
        envs = evaluate(self.model, self.data, self.dataset.task)
        window = {k: (v / self._window_steps).tolist() for k, v in self._window.items()} if self._window_steps else {}
        records: list[dict[str, Any] | None] = []
        for r in range(self.runs):
            if not self.is_active(r):
                records.append(None)
                continue
            record: dict[str, Any] = {"step": self.steps_done, "envs": envs[r]}
            if window:
                record["train"] = {k: v[r] for k, v in window.items()}
            extra = self.datasets[r].extra_metrics
            if extra is not None:
                record["extra"] = extra(self.model.single(r))
            records.append(record)
        self._window, self._window_steps = {}, 0
        self._evaluated_at = self.steps_done
        return records

    def checkpoint_bytes(self, run: int = 0) -> bytes:
        """Everything ``resume`` needs for run ``run``, at the current step (taken right after
        its record)."""
        buffer = io.BytesIO()
        method_state = {name: tensor[run].detach().cpu().clone() for name, tensor in self.method.state_dict().items()}
        torch.save({
            "format": CHECKPOINT_FORMAT, "run_id": self.specs[run].run_id, "step": self.steps_done,
            "elapsed": self.elapsed(run), "model": {k: v.cpu() for k, v in self.model.run_state_dict(run).items()},
            "optimizer": _to_cpu(self.optimizer.run_state_dict(run)), "method": method_state,
        }, buffer)
        return buffer.getvalue()

    def finish(self, run: int = 0) -> dict[str, Any]:
        """Run ``run``'s part of the done record."""
        # wall_time: the run's training, which lasted as long as its pack's
        return {"steps": self.spec.steps, "wall_time": self.elapsed(run), "pack_size": self.runs,
                "device": str(self.device), "torch": torch.__version__, "source": self.datasets[run].source}

    def _accumulate(self, result: StepResult) -> None:
        """Add this step's per-run values to the training window (on the device: no sync)."""
        objective = result.objective
        values: dict[str, Any] = {"loss": result.loss, "risk": objective.risk.detach(),
                                  "penalty_weight": objective.penalty_weight}
        if objective.penalty is not None:
            values["penalty"] = objective.penalty.detach()
        if objective.env_losses is not None:
            for i in range(objective.env_losses.shape[0]):
                values[f"env{i}_loss"] = objective.env_losses[i].detach()
        values.update(objective.logs)
        for key, value in values.items():
            value = torch.as_tensor(value, device=self.device).detach().to(torch.float64).expand(self.runs)
            self._window[key] = self._window[key] + value if key in self._window else value.clone()
        self._window_steps += 1


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def seconds_per_pack_step(specs: Sequence[RunSpec], steps: int = 3) -> float:
    """Median wall seconds of one training step of the pack ``specs`` over ``steps`` steps
    (after one warm-up step), on the specs' device with the current torch thread setting:
    what `sweep launch` extrapolates its estimate from. The median: a busy machine's pauses
    land on single steps. Never more steps than that: a run's schedule, or a plugin, may
    do something at a later step."""
    trainer = Trainer(list(specs))
    trainer.step()  # warm-up: first-call allocations and lazy initialisation
    times: list[float] = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
