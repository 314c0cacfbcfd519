"""Train one run spec and write its run directory.

Files of a run directory:
  spec.json       the spec (with its id), written first
  dataset.json    the data source, environment names and sizes
  started.json    pid, host, start time and executor job id of the latest attempt
  metrics.jsonl   one line per evaluation; deterministic (no clocks), so that the same
                  spec on the same machine gives the same bytes
  timing.jsonl    wall time of each evaluation (kept apart: clocks are not reproducible)
  checkpoint.pt   model, optimizer, method state and step of the latest evaluation
  done.json       written last, atomically: the run finished
  error.json      the error and traceback of a failed attempt
  lock            held (fcntl.flock) by the one process training the run: a second process
                  for the same run gets RunBusyError instead of training it concurrently, and
                  a launcher tells a running run (lock held) from a stale one (its worker died)

The record at step s describes the model after s updates (the IRM code's "step 500 of
501" is our step 500). Training resumes from checkpoint.pt: records after the saved step
are dropped first, so none repeats and none is missing.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from invbench.data import TRAIN, Dataset
from invbench.errors import ConfigError, InvbenchError
from invbench.hparams import seed_hash
from invbench.io import append_jsonl, atomic_write_bytes, atomic_write_json, iter_jsonl, read_json
from invbench.method import Method
from invbench.models import build_model
from invbench.registry import DATASETS, METHODS
from invbench.rundir import CHECKPOINT, DATASET, DONE, ERROR, METRICS, SPEC, STARTED, TIMING, run_lock
# re-exported for callers of the runner (the executors catch RunBusyError from here, tests use
# run_status); readers of run directories import them from invbench.rundir itself
from invbench.rundir import LOCK, RunBusyError, is_locked, run_status  # noqa: F401
from invbench.spec import RunSpec

EVAL_CHUNK = 8192


class RunFailedError(RuntimeError):
    """A run raised; its directory holds error.json with the traceback."""

    def __init__(self, run_dir: Path, message: str):
        super().__init__(f"run {run_dir.name} failed: {message} (traceback in {run_dir / ERROR})")
        self.run_dir = run_dir


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but CUDA is not available; use --device cpu or auto")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N")


def build_dataset(spec: RunSpec) -> Dataset:
    family = DATASETS.get(spec.dataset)()
    return family.build(spec.dataset_options, spec.trial, spec.holdout_fraction, spec.data_dir)


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


def _job_id(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID")


def _write_started(run_dir: Path, job_id: str | None) -> None:
    atomic_write_json(run_dir / STARTED, {
        "pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "job_id": _job_id(job_id),
    })


def _keep_records_up_to(path: Path, step: int) -> None:
    """Drop records after ``step`` (and corrupt lines) so a resumed run repeats none."""
    if not path.exists():
        return
    kept = [raw if raw.endswith("\n") else raw + "\n"
            for _, record, raw in iter_jsonl(path) if record is not None and record["step"] <= step]
    atomic_write_bytes(path, "".join(kept).encode())


def run(spec: RunSpec, out_root: Path | str, *, job_id: str | None = None,
        log: Callable[[str], None] | None = None) -> Path:
    """Train ``spec`` (resuming from its checkpoint) and return its run directory.

    A finished run (done.json present) returns at once. Raises RunFailedError when the run
    raised; its directory then holds error.json.
    """
    run_dir = Path(out_root) / spec.dirname
    if (run_dir / DONE).exists():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        if (run_dir / DONE).exists():  # another process finished it while we waited to start
            return run_dir
        _run_locked(spec, run_dir, job_id, log)
    return run_dir


def _run_locked(spec: RunSpec, run_dir: Path, job_id: str | None, log: Callable[[str], None] | None) -> None:
    spec_path = run_dir / SPEC
    if spec_path.exists() and read_json(spec_path).get("run_id") != spec.run_id:
        raise InvbenchError(f"{run_dir} holds a different run (spec id mismatch); move it away")
    atomic_write_json(spec_path, spec.to_dict())
    (run_dir / ERROR).unlink(missing_ok=True)
    _write_started(run_dir, job_id)
    try:
        _train(spec, run_dir, log or (lambda message: None))
    except KeyboardInterrupt:
        # Ctrl-C is not the run's failure: no error.json, so the run reads "stale" (not
        # "failed") and the next launch resumes it from its checkpoint.
        raise
    except Exception as exc:
        atomic_write_json(run_dir / ERROR, {
            "type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(),
            "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
        })
        raise RunFailedError(run_dir, f"{type(exc).__name__}: {exc}") from exc


def _train(spec: RunSpec, run_dir: Path, log: Callable[[str], None]) -> None:
    started = time.perf_counter()
    device = resolve_device(spec.device)
    dataset = build_dataset(spec).to(device)
    train_envs = [i for i in range(len(dataset.envs)) if i not in spec.test_envs]
    hp = dict(spec.hparams)
    check_batch_sizes(dataset, train_envs, hp["batch_size"])
    atomic_write_json(run_dir / DATASET, {
        "source": dataset.source, "env_names": dataset.env_names, "task": dataset.task.kind,
        "test_envs": list(spec.test_envs), "train_envs": train_envs,
        "env_sizes": {env.name: {s: len(t[1]) for s, t in env.splits.items()} for env in dataset.envs},
        "env_info": {env.name: env.info for env in dataset.envs},
    })

    run_seed = seed_hash("run", spec.trial, spec.hparams_seed)
    torch.manual_seed(run_seed)
    model = build_model(spec.model, dataset.input_shape, dataset.n_outputs, hp).to(device)
    method: Method = METHODS.get(spec.method)(
        hp, len(train_envs), dataset.task, env_sizes=[dataset.envs[i].size(TRAIN) for i in train_envs]).to(device)
    optimizer = make_optimizer(model, hp)
    sampler = MinibatchSampler(dataset, train_envs, hp["batch_size"], run_seed)

    step, elapsed_before = 0, 0.0
    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["run_id"] != spec.run_id:
            raise InvbenchError(f"{checkpoint_path} belongs to another run")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        torch.set_rng_state(state["rng"])
        step, elapsed_before = state["step"], state["elapsed"]
        log(f"resuming {spec.dirname} at step {step}")
    _keep_records_up_to(run_dir / METRICS, step if checkpoint_path.exists() else -1)
    _keep_records_up_to(run_dir / TIMING, step if checkpoint_path.exists() else -1)
    resumed_at = step if checkpoint_path.exists() else None

    window: dict[str, float] = {}
    window_steps = 0
    l2 = hp["l2"]
    reset_step = method.optimizer_reset_step()
    while True:
        if (step % spec.eval_every == 0 or step == spec.steps) and step != resumed_at:
            record = {"step": step, "envs": evaluate(model, dataset)}
            if window_steps:
                record["train"] = {k: v / window_steps for k, v in window.items()}
            if dataset.extra_metrics is not None:
                record["extra"] = dataset.extra_metrics(model)
            append_jsonl(run_dir / METRICS, record)
            elapsed = elapsed_before + time.perf_counter() - started
            append_jsonl(run_dir / TIMING, {"step": step, "wall_time": elapsed})
            window, window_steps = {}, 0
            atomic_write_bytes(checkpoint_path, _checkpoint_bytes(spec, step, elapsed, model, optimizer, method))
            log(f"step {step}/{spec.steps}")
        if step >= spec.steps:
            break
        objective = method.objective(model, sampler.batches(step), step)
        loss = objective.risk
        if l2:
            loss = loss + l2 * sum(p.pow(2).sum() for p in model.parameters())
        if objective.penalty is not None:
            loss = loss + objective.penalty_weight * objective.penalty
        loss = loss / objective.divide_by
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}")
        if reset_step is not None and step == reset_step:
            optimizer = make_optimizer(model, hp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _accumulate(window, objective, loss)
        window_steps += 1
        step += 1

    atomic_write_json(run_dir / DONE, {
        "run_id": spec.run_id, "steps": spec.steps, "time": time.time(),
        "wall_time": elapsed_before + time.perf_counter() - started, "device": str(device),
        "torch": torch.__version__, "source": dataset.source,
    })


def _accumulate(window: dict[str, float], objective: Any, loss: torch.Tensor) -> None:
    values = {"loss": loss.item(), "risk": objective.risk.item(), "penalty_weight": objective.penalty_weight}
    if objective.penalty is not None:
        values["penalty"] = objective.penalty.item()
    if objective.env_losses is not None:
        for i, value in enumerate(objective.env_losses.tolist()):
            values[f"env{i}_loss"] = value
    values.update(objective.logs)
    for key, value in values.items():
        window[key] = window.get(key, 0.0) + float(value)


def _checkpoint_bytes(spec: RunSpec, step: int, elapsed: float, model, optimizer, method) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({
        "run_id": spec.run_id, "step": step, "elapsed": elapsed, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "method": method.state_dict(), "rng": torch.get_rng_state(),
    }, buffer)
    return buffer.getvalue()


def load_records(run_dir: Path) -> list[dict]:
    return [record for _, record, _ in iter_jsonl(run_dir / METRICS) if record is not None]

