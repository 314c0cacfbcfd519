"""The sweep file: TOML schema, validation and deterministic expansion into run specs.

A sweep names datasets (with options and test environments), methods, the number of
hyperparameter draws (draw 0 = the defaults, as in DomainBed's sweep) and of trials (data
seeds), and the executor with its settings. Every key is checked before anything runs:
an unknown key is named with its close match and the allowed keys, a bad value says what
is allowed, and an unknown method or dataset is a registry error. Command-line flags
override the file (``apply_overrides``).

Example::

    name = "demo"
    methods = ["erm", "irm"]
    trials = 3
    hparam_draws = 1

    [[datasets]]
    name = "linear_sem"
    options = { n_per_env = 1000 }
    test_envs = [[2]]

    [executor]
    kind = "local"
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from invbench.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

EXECUTORS = ("inline", "local", "slurm")

TOP_KEYS = {
    "name": "the sweep's name (default: the file's stem)",
    "out": "root folder of the run directories (default runs/NAME)",
    "methods": "list of registered methods",
    "datasets": "array of [[datasets]] tables",
    "trials": "number of data seeds: trials 0..n-1 (default 1)",
    "hparam_draws": "number of hyperparameter draws: 0..n-1, draw 0 = defaults (default 1)",
    "steps": "training steps (default: the protocol's)",
    "eval_every": "evaluation interval (default: the protocol's)",
    "holdout_fraction": "fraction of each environment held out as 'val'",
    "preset": "a protocol to follow instead of each dataset's own, e.g. irm-paper (invbench list protocols)",
    "hparams": "hyperparameter values for every method (table)",
    "method_hparams": "hyperparameter values per method ([method_hparams.irm])",
    "model": "model for every run (default: the protocol's or the dataset's)",
    "device": "auto, cpu, cuda or cuda:N (default cpu)",
    "data_dir": "where image datasets look for data",
    "executor": "the [executor] table",
}
DATASET_KEYS = {
    "name": "a registered dataset",
    "options": "dataset options (table)",
    "test_envs": 'list of test-environment sets like [[0], [1]], or "each" (each env in turn)',
    "steps": "overrides the sweep's steps for this dataset",
    "eval_every": "overrides the sweep's eval_every for this dataset",
    "holdout_fraction": "overrides the sweep's holdout_fraction for this dataset",
    "hparams": "hyperparameter values for this dataset's runs (table)",
}
EXECUTOR_KEYS = {
    "kind": "inline, local or slurm",
    "workers": "local: worker processes (0 = the number of cores)",
    "threads": "torch threads per run (0 = cores // workers locally, cpus_per_task on SLURM)",
    "runs_per_task": "slurm: runs that share one array task, run in order",
    "slurm": "the [executor.slurm] table",
}
SLURM_KEYS = {
    "partition": "SLURM partition",
    "account": "SLURM account",
    "qos": "SLURM quality of service",
    "time_min": "time limit of one array task in minutes (default 60)",
    "mem_gb": "memory per task in GB",
    "cpus_per_task": "CPUs per task (default 1)",
    "gpus_per_node": "GPUs per task (default 0)",
    "array_parallelism": "at most this many array tasks at once (default 256)",
    "setup": "shell lines run before each task (list of strings)",
    "additional": "any other sbatch flag, e.g. { constraint = 'volta' } (table)",
    "job_name": "the job's name (default invbench-NAME)",
    "signal_delay_s": "seconds between SLURM's warning signal and the time limit (default 90)",
}


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    mem_gb: float | None = None
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    array_parallelism: int = 256
    setup: tuple[str, ...] = ()
    additional: Mapping[str, Any] = field(default_factory=dict)
    job_name: str | None = None
    signal_delay_s: int = 90


@dataclass(frozen=True)
class ExecutorSettings:
    kind: str = "local"
    workers: int = 0
    threads: int = 0
    runs_per_task: int = 1
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    test_envs: Any = None  # None (the dataset's default), "each", or a list of lists
    steps: int | None = None
    eval_every: int | None = None
    holdout_fraction: float | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepConfig:
    name: str
    out: str
    methods: tuple[str, ...]
    datasets: tuple[DatasetEntry, ...]
    trials: int = 1
    hparam_draws: int = 1
    steps: int | None = None
    eval_every: int | None = None
    holdout_fraction: float | None = None
    preset: str | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)
    method_hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model: str | None = None
    device: str = "cpu"
    data_dir: str | None = None
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    source: str = ""  # the file it came from, for messages

    @property
    def out_root(self) -> Path:
        return Path(self.out)


# Loading and validation -------------------------------------------------------------------

def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; raise ConfigError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        shipped = shipped_sweeps()
        hint = f"; shipped sweep files: {', '.join(sorted(shipped))}" if shipped else ""
        if path.suffix == "" and path.name in shipped:
            path = shipped[path.name]
        else:
            raise ConfigError(f"sweep file {str(path)!r} does not exist{hint}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_sweep(data, source=str(path), default_name=path.stem)


def shipped_sweeps() -> dict[str, Path]:
    """The example sweep files shipped in benchmark/sweeps, by name."""
    folder = Path(__file__).resolve().parent.parent / "sweeps"
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def parse_sweep(data: Mapping[str, Any], *, source: str = "<sweep>", default_name: str = "sweep") -> SweepConfig:
    where = source
    _check_keys(data, TOP_KEYS, where)
    name = _get(data, "name", str, where, default_name)
    if not name or any(c in name for c in "/\\ "):
        raise ConfigError(f"{where}: name must be a non-empty word without spaces or slashes; got {name!r}")
    methods = _str_list(data, "methods", where, required=True)
    raw_datasets = data.get("datasets")
    if not isinstance(raw_datasets, list) or not raw_datasets or not all(isinstance(d, dict) for d in raw_datasets):
        raise ConfigError(f"{where}: 'datasets' must be one or more [[datasets]] tables, each with a name")
    datasets = tuple(_parse_dataset(d, f"{where} [[datasets]] #{i + 1}") for i, d in enumerate(raw_datasets))
    method_hparams = data.get("method_hparams", {})
    if not isinstance(method_hparams, dict) or not all(isinstance(v, dict) for v in method_hparams.values()):
        raise ConfigError(f"{where}: method_hparams must hold one table per method, like [method_hparams.irm]")
    stray = sorted(set(method_hparams) - set(methods))
    if stray:
        raise ConfigError(f"{where}: [method_hparams] names {stray}, which are not in methods = {list(methods)}")
    return SweepConfig(
        name=name,
        out=_get(data, "out", str, where, f"runs/{name}"),
        methods=methods,
        datasets=datasets,
        trials=_positive(data, "trials", where, 1),
        hparam_draws=_positive(data, "hparam_draws", where, 1),
        steps=_positive(data, "steps", where, None),
        eval_every=_positive(data, "eval_every", where, None),
        holdout_fraction=_fraction(data, "holdout_fraction", where),
        preset=_get(data, "preset", str, where, None),
        hparams=_table(data, "hparams", where),
        method_hparams={k: dict(v) for k, v in method_hparams.items()},
        model=_get(data, "model", str, where, None),
        device=_device(_get(data, "device", str, where, "cpu"), f"{where}: device"),
        data_dir=_get(data, "data_dir", str, where, None),
        executor=_parse_executor(data.get("executor", {}), f"{where} [executor]"),
        source=source,
    )


def _parse_dataset(data: Mapping[str, Any], where: str) -> DatasetEntry:
    _check_keys(data, DATASET_KEYS, where)
    name = _get(data, "name", str, where, None)
    if not name:
        raise ConfigError(f"{where}: every [[datasets]] table needs a name")
    test_envs = data.get("test_envs")
    if test_envs is not None and test_envs != "each":
        ok = isinstance(test_envs, list) and test_envs and all(
            isinstance(s, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in s) for s in test_envs)
        if not ok:
            raise ConfigError(f"{where}: test_envs must be \"each\" or a list of lists of environment indices "
                              f"like [[0], [1, 2]]; got {test_envs!r}")
    return DatasetEntry(
        name=name, options=_table(data, "options", where), test_envs=test_envs,
        steps=_positive(data, "steps", where, None), eval_every=_positive(data, "eval_every", where, None),
        holdout_fraction=_fraction(data, "holdout_fraction", where), hparams=_table(data, "hparams", where),
    )


def _parse_executor(data: Any, where: str) -> ExecutorSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table")
    _check_keys(data, EXECUTOR_KEYS, where)
    kind = _get(data, "kind", str, where, "local")
    if kind not in EXECUTORS:
        raise ConfigError(f"{where}: kind = {kind!r} is not an executor; allowed: {', '.join(EXECUTORS)}")
    return ExecutorSettings(
        kind=kind,
        workers=_non_negative(data, "workers", where, 0),
        threads=_non_negative(data, "threads", where, 0),
        runs_per_task=_positive(data, "runs_per_task", where, 1),
        slurm=_parse_slurm(data.get("slurm", {}), f"{where[:-1]}.slurm]"),
    )


def _parse_slurm(data: Any, where: str) -> SlurmSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table")
    _check_keys(data, SLURM_KEYS, where)
    mem = data.get("mem_gb")
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem <= 0):
        raise ConfigError(f"{where}: mem_gb must be a positive number; got {mem!r}")
    setup = _str_list(data, "setup", where, required=False)
    return SlurmSettings(
        partition=_get(data, "partition", str, where, None),
        account=_get(data, "account", str, where, None),
        qos=_get(data, "qos", str, where, None),
        time_min=_positive(data, "time_min", where, 60),
        mem_gb=mem,
        cpus_per_task=_positive(data, "cpus_per_task", where, 1),
        gpus_per_node=_non_negative(data, "gpus_per_node", where, 0),
        array_parallelism=_positive(data, "array_parallelism", where, 256),
        setup=setup,
        additional=_table(data, "additional", where),
        job_name=_get(data, "job_name", str, where, None),
        signal_delay_s=_positive(data, "signal_delay_s", where, 90),
    )


def _check_keys(data: Mapping[str, Any], allowed: Mapping[str, str], where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listing = "; ".join(f"{k} ({v})" for k, v in allowed.items())
        raise ConfigError(f"{where}: unknown key {key!r}.{hint} Allowed keys: {listing}")


def _type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", dict: "a table"}.get(kind, kind.__name__)


def _get(data: Mapping[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    if key not in data:
        return default
    value = data[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: {key} must be {_type_name(kind)}; got {value!r}")
    return value


def _positive(data: Mapping[str, Any], key: str, where: str, default: Any) -> Any:
    value = _get(data, key, int, where, default)
    if value is not None and value < 1:
        raise ConfigError(f"{where}: {key} must be an integer >= 1; got {value!r}")
    return value


def _non_negative(data: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = _get(data, key, int, where, default)
    if value < 0:
        raise ConfigError(f"{where}: {key} must be an integer >= 0; got {value!r}")
    return value


def _fraction(data: Mapping[str, Any], key: str, where: str) -> float | None:
    if key not in data:
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{where}: {key} must be a number in [0, 1); got {value!r}")
    return float(value)


def _device(name: str, where: str) -> str:
    """auto, cpu, cuda or cuda:N, checked before anything runs (not in every run's error.json)."""
    index = name[len("cuda:"):] if name.startswith("cuda:") else None
    if name not in ("auto", "cpu", "cuda") and not (index is not None and index.isdigit()):
        raise ConfigError(f"{where} {name!r} is not a device; allowed: auto, cpu, cuda, cuda:N")
    return name


def check_local_device(config: "SweepConfig") -> None:
    """A sweep run on this machine (inline, local) that asks for CUDA needs CUDA here."""
    if config.device.startswith("cuda") and config.executor.kind in ("inline", "local"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {config.device!r} was asked for but CUDA is not available on this machine; "
                              f"use --device cpu or auto")


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    return dict(_get(data, key, dict, where, {}))


def _str_list(data: Mapping[str, Any], key: str, where: str, *, required: bool) -> tuple[str, ...]:
    value = data.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a non-empty list of strings; got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: {key} lists a name twice: {value!r}")
    return tuple(value)


# Command-line overrides -------------------------------------------------------------------

def apply_overrides(config: SweepConfig, **flags: Any) -> SweepConfig:
    """Flags given on the command line (None = not given) win over the file.

    Sweep-level: out, steps, eval_every, trials, hparam_draws, device, data_dir, methods.
    Executor: executor (kind), workers, threads, runs_per_task; slurm: a dict of SLURM keys.
    """
    top = {k: flags.pop(k) for k in ("out", "steps", "eval_every", "trials", "hparam_draws", "device", "data_dir",
                                      "methods") if flags.get(k) is not None}
    for key in ("steps", "eval_every", "trials", "hparam_draws"):
        if key in top and top[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1; got {top[key]}")
    if "methods" in top:
        top["methods"] = tuple(top["methods"])
    if "device" in top:
        _device(top["device"], "--device")
    executor = config.executor
    kind = flags.pop("executor", None)
    if kind is not None:
        if kind not in EXECUTORS:
            raise ConfigError(f"--executor {kind!r} is not an executor; allowed: {', '.join(EXECUTORS)}")
        executor = dataclasses.replace(executor, kind=kind)
    for key in ("workers", "threads", "runs_per_task"):
        value = flags.pop(key, None)
        if value is not None:
            if value < (1 if key == "runs_per_task" else 0):
                raise ConfigError(f"--{key.replace('_', '-')} must be >= {1 if key == 'runs_per_task' else 0}; got {value}")
            executor = dataclasses.replace(executor, **{key: value})
    slurm = flags.pop("slurm", None)
    if slurm:
        merged = {k: v for k, v in dataclasses.asdict(executor.slurm).items()}
        merged.update(slurm)
        merged["setup"] = list(merged["setup"])
        merged = {k: v for k, v in merged.items() if v is not None and v != []}
        executor = dataclasses.replace(executor, slurm=_parse_slurm(merged, "--slurm"))
    leftover = [k for k, v in flags.items() if v is not None]
    if leftover:
        raise ConfigError(f"unknown sweep override(s) {leftover}")
    return dataclasses.replace(config, executor=executor, **top)


# Expansion --------------------------------------------------------------------------------

def expand(config: SweepConfig) -> list:
    """The sweep's run specs, in a fixed order: dataset, test environments, method, draw,
    trial. Duplicates (the same run id) are kept once. Raises ConfigError or
    UnknownNameError for a bad dataset, method, option, preset or hyperparameter."""
    from invbench.registry import DATASETS
    from invbench.spec import make_spec

    specs, seen = [], set()
    for entry in config.datasets:
        family = DATASETS.get(entry.name)
        options = family.resolve_options(entry.options)
        for test_envs in _test_env_sets(family, options, entry.test_envs):
            for method in config.methods:
                overrides = {**config.hparams, **entry.hparams, **config.method_hparams.get(method, {})}
                overrides = _relevant(overrides, method, entry.name, config, entry)
                for draw in range(config.hparam_draws):
                    for trial in range(config.trials):
                        spec = make_spec(
                            entry.name, method, dataset_options=options, test_envs=test_envs, trial=trial,
                            hparams_seed=draw, overrides=overrides, preset=config.preset,
                            steps=entry.steps or config.steps, eval_every=entry.eval_every or config.eval_every,
                            holdout_fraction=_first(entry.holdout_fraction, config.holdout_fraction),
                            model=config.model, data_dir=config.data_dir, device=config.device,
                        )
                        if spec.run_id not in seen:
                            seen.add(spec.run_id)
                            specs.append(spec)
    return specs


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _relevant(overrides: dict[str, Any], method: str, dataset: str, config: SweepConfig,
              entry: DatasetEntry) -> dict[str, Any]:
    """Sweep-wide [hparams] may name a method's own hyperparameter (penalty_weight): the
    methods without it ignore it, but a name that no method of the sweep knows is an error."""
    from invbench.spec import hparam_space

    space = hparam_space(method, dataset, protocol=config.preset, model=config.model)
    known_anywhere = set()
    for other in config.methods:
        known_anywhere |= set(hparam_space(other, dataset, protocol=config.preset, model=config.model))
    unknown = sorted(set(overrides) - known_anywhere)
    if unknown:
        from invbench.hparams import validate_overrides

        validate_overrides(space, {k: overrides[k] for k in unknown}, f"the sweep's methods on {dataset!r}")
    scoped = dict(config.method_hparams.get(method, {}))
    # a method's own table must only name its hyperparameters
    from invbench.hparams import validate_overrides

    validate_overrides(space, scoped, f"method {method!r} ([method_hparams.{method}])")
    return {k: v for k, v in overrides.items() if k in space}


def _test_env_sets(family, options: Mapping[str, Any], test_envs: Any) -> list[tuple[int, ...] | None]:
    if test_envs is None:
        return [None]
    if test_envs == "each":
        return [(i,) for i in range(len(family.env_names(options)))]
    return [tuple(s) for s in test_envs]


def preflight(specs: list) -> None:
    """Check what only the data can tell before anything is submitted: every training
    environment holds at least a batch. Each distinct dataset is built once (data seed 0;
    environment sizes do not depend on the seed)."""
    from invbench.registry import DATASETS
    from invbench.runner import check_batch_sizes

    built: dict[str, Any] = {}
    for spec in specs:
        batch = spec.hparams.get("batch_size", 0)
        if not batch:
            continue
        key = repr((spec.dataset, sorted(spec.dataset_options.items()), spec.holdout_fraction, spec.data_dir))
        if key not in built:
            built[key] = DATASETS.get(spec.dataset)().build(spec.dataset_options, 0, spec.holdout_fraction,
                                                            spec.data_dir)
        dataset = built[key]
        train_envs = [i for i in range(len(dataset.envs)) if i not in spec.test_envs]
        try:
            check_batch_sizes(dataset, train_envs, batch)
        except ConfigError as exc:
            raise ConfigError(f"{spec.dataset} with {spec.method} (draw {spec.hparams_seed}): {exc}") from None
