"""The sweep file's schema: every key declared once, on the dataclass field that holds it.

A sweep names datasets (with options and test environments), methods, the number of
hyperparameter draws (draw 0 = the defaults, as in DomainBed's sweep) and of trials (data
seeds), and the executor with its settings. Example::

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

Each field's metadata holds a ``Key``: what the key means and the ``Rule`` its value must
follow (type and range). ``parse_sweep`` checks a whole file against these declarations
and reports every problem at once (each unknown key with its close match, each bad value
with what is allowed); ``apply_overrides`` checks command-line flags against the same
declarations. Registered names (methods, datasets, options, hyperparameters) are checked
at expansion (invbench.sweep.expansion), which needs the registries.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from invbench.devices import DEVICES, is_device_name
from invbench.errors import ConfigError
from invbench.sweep.executors import EXECUTORS, describe_executors
from invbench.sufficient import EXAMPLES, TRAIN_DATA

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class Invalid(Exception):
    """A value that breaks its rule; the message completes "KEY must be ..."."""


# Rules: what a key's value may be -----------------------------------------------------------

class Rule:
    allowed = ""  # completes "KEY must be ..."

    def check(self, value: Any) -> Any:
        """The value, converted to what the settings hold; Invalid when it breaks the rule."""
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        """A command-line string (KEY=VALUE) converted and checked."""
        raise Invalid(f"must be set in the sweep file ({self.allowed}), not on the command line")

    def fail(self, value: Any) -> Invalid:
        return Invalid(f"must be {self.allowed}; got {value!r}")


class Text(Rule):
    allowed = "a string"

    def check(self, value):
        if not isinstance(value, str):
            raise self.fail(value)
        return value

    def from_text(self, text):
        return self.check(text)


class Word(Text):
    allowed = "a non-empty word without spaces or slashes"

    def check(self, value):
        if not isinstance(value, str) or not value or any(c in value for c in "/\\ "):
            raise self.fail(value)
        return value


class NumericRule(Rule):
    """A rule whose command-line text is parsed with ``parse`` (int or float) before the check."""

    parse: Any = float

    def from_text(self, text):
        try:
            return self.check(self.parse(text))
        except ValueError:
            raise self.fail(text) from None


class Integer(NumericRule):
    parse = int

    def __init__(self, minimum: int):
        self.minimum = minimum
        self.allowed = f"an integer >= {minimum}"

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
            raise self.fail(value)
        return value


class Number(NumericRule):
    allowed = "a positive number"

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise self.fail(value)
        return value


class Fraction(NumericRule):
    allowed = "a number in [0, 1)"

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise self.fail(value)
        return float(value)


class Choice(Text):
    def __init__(self, options: tuple[str, ...]):
        self.options = options
        self.allowed = "one of " + ", ".join(options)

    def check(self, value):
        if value not in self.options:
            raise self.fail(value)
        return value


class Device(Text):
    allowed = DEVICES

    def check(self, value):
        if not is_device_name(value):
            raise self.fail(value)
        return value


class PackSize(Rule):
    allowed = "a positive integer or 'auto'"

    def check(self, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise self.fail(value)

    def from_text(self, text):
        return text if text == "auto" else self.check(int(text) if text.strip().isdigit() else text)


class Strings(Rule):
    allowed = "a list of strings"

    def check(self, value):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.fail(value)
        return tuple(value)


class Names(Rule):
    allowed = "a non-empty list of names (strings), each once"

    def check(self, value):
        if (not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value)
                or len(set(value)) != len(value)):
            raise self.fail(value)
        return tuple(value)


class Table(Rule):
    allowed = "a table"

    def check(self, value):
        if not isinstance(value, Mapping):
            raise self.fail(value)
        return dict(value)


class TablePerName(Rule):
    allowed = "one table per method, like [method_hparams.irm]"

    def check(self, value):
        if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
            raise self.fail(value)
        return {k: dict(v) for k, v in value.items()}


class GridPerName(Rule):
    allowed = "one table per method of non-empty lists of values, like [method_grid.irm] penalty_weight = [1, 10]"

    def check(self, value):
        if not isinstance(value, Mapping) or not all(
                isinstance(v, Mapping) and all(isinstance(x, list) and x for x in v.values()) for v in value.values()):
            raise self.fail(value)
        return {k: {name: tuple(values) for name, values in v.items()} for k, v in value.items()}


class TestEnvs(Rule):
    allowed = '"each" or a list of lists of environment indices like [[0], [1, 2]]'

    def check(self, value):
        if value == "each":
            return value
        ok = isinstance(value, list) and value and all(
            isinstance(s, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in s) for s in value)
        if not ok:
            raise self.fail(value)
        return value


class Section(Rule):
    """A nested table, parsed with its own declarations."""

    allowed = "a table"

    def __init__(self, cls: type):
        self.cls = cls


class Sections(Rule):
    """An array of tables ([[datasets]]), each parsed with its own declarations."""

    def __init__(self, cls: type, title: str):
        self.cls, self.title = cls, title
        self.allowed = f"one or more [[{title}]] tables"


@dataclass(frozen=True)
class Key:
    rule: Rule
    doc: str
    required: bool = False


def key(rule: Rule, doc: str, default: Any = None, *, factory: Any = None, required: bool = False,
        computed: bool = False) -> Any:
    """A dataclass field declaring one key of the sweep file. ``required``: the file must
    give it; ``computed``: optional in the file, its default is computed when parsing."""
    metadata = {"key": Key(rule, doc, required)}
    if required or computed:
        return field(metadata=metadata)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def keys(cls: type) -> dict[str, Key]:
    """The keys declared by a settings class, in declaration order."""
    return {f.name: f.metadata["key"] for f in dataclasses.fields(cls) if "key" in f.metadata}


def describe(cls: type, name: str) -> str:
    """A key's meaning with its default, for messages and --help."""
    declared = next(f for f in dataclasses.fields(cls) if f.name == name)
    text = declared.metadata["key"].doc
    default = declared.default
    if default is not dataclasses.MISSING and default is not None and default != ():
        text += f" (default {default})"
    return text


# The declarations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = key(Text(), "SLURM partition")
    account: str | None = key(Text(), "SLURM account")
    qos: str | None = key(Text(), "SLURM quality of service")
    time_min: int = key(Integer(1), "time limit of one array task in minutes", 60)
    mem_gb: float | None = key(Number(), "memory per task in GB")
    cpus_per_task: int = key(Integer(1), "CPUs per task", 1)
    gpus_per_node: int = key(Integer(0), "GPUs per task", 0)
    array_parallelism: int = key(Integer(1), "at most this many array tasks at once", 256)
    setup: tuple[str, ...] = key(Strings(), "shell lines run before each task", ())
    additional: Mapping[str, Any] = key(Table(), "any other sbatch flag, e.g. { constraint = 'volta' }",
                                        factory=dict)
    job_name: str | None = key(Text(), "the job's name (default invbench-NAME)")
    signal_delay_s: int = key(Integer(1), "seconds between SLURM's warning signal and the time limit", 90)


@dataclass(frozen=True)
class ExecutorSettings:
    kind: str = key(Choice(EXECUTORS), f"where the runs run ({describe_executors()})", "local")
    workers: int = key(Integer(0), "local: worker processes (0 = the number of cores)", 0)
    threads: int = key(Integer(0), "torch threads per run (0 = cores // workers locally, cpus_per_task on SLURM)", 0)
    runs_per_task: int = key(Integer(1), "slurm: runs that share one array task: whole packs, in order, up to "
                                         "this many runs (a larger pack has a task of its own)", 1)
    pack_size: int | str = key(PackSize(), "runs trained together as one batched computation (invbench.packing): "
                                           "a positive integer (1 = each run alone) or 'auto' (from the model's "
                                           "memory and the memory available)", 1)
    slurm: SlurmSettings = key(Section(SlurmSettings), "the [executor.slurm] table", factory=SlurmSettings)


@dataclass(frozen=True)
class DatasetEntry:
    name: str = key(Text(), "a registered dataset", required=True)
    options: Mapping[str, Any] = key(Table(), "dataset options", factory=dict)
    # None: the dataset's default test environments
    test_envs: Any = key(TestEnvs(), 'test-environment sets like [[0], [1]], or "each" (each env in turn)')
    steps: int | None = key(Integer(1), "overrides the sweep's steps for this dataset")
    eval_every: int | None = key(Integer(1), "overrides the sweep's eval_every for this dataset")
    holdout_fraction: float | None = key(Fraction(), "overrides the sweep's holdout_fraction for this dataset")
    hparams: Mapping[str, Any] = key(Table(), "hyperparameter values for this dataset's runs", factory=dict)
    train_data: str = key(Choice(TRAIN_DATA), "what the runs train on: the examples, or each environment's "
                                              "sufficient statistics (exact and faster for squared-error linear "
                                              "models through the origin, full batch)", EXAMPLES)
    # e.g. the IRM paper's SEMs: pooled ERM trains on every environment, IRM holds one out
    methods: tuple[str, ...] = key(Names(), "only these of the sweep's methods train on this entry "
                                            "(default: all of them)", ())


@dataclass(frozen=True)
class SweepConfig:
    name: str = key(Word(), "the sweep's name (default: the file's stem)", computed=True)
    out: str = key(Text(), "root folder of the run directories (default runs/NAME)", computed=True)
    methods: tuple[str, ...] = key(Names(), "registered methods", required=True)
    datasets: tuple[DatasetEntry, ...] = key(Sections(DatasetEntry, "datasets"), "the datasets", required=True)
    trials: int = key(Integer(1), "number of data seeds: trials 0..n-1", 1)
    hparam_draws: int = key(Integer(1), "number of hyperparameter draws, >= 1: draws 0..n-1, where draw 0 is the defaults", 1)
    steps: int | None = key(Integer(1), "training steps (default: the protocol's)")
    eval_every: int | None = key(Integer(1), "evaluation interval (default: the protocol's)")
    holdout_fraction: float | None = key(Fraction(), "fraction of each environment held out as 'val'")
    preset: str | None = key(Text(), "a protocol to follow instead of each dataset's own, e.g. irm-paper (invbench list protocols)")
    hparams: Mapping[str, Any] = key(Table(), "hyperparameter values for every method", factory=dict)
    method_hparams: Mapping[str, Mapping[str, Any]] = key(
        TablePerName(), "hyperparameter values per method ([method_hparams.irm])", factory=dict)
    method_grid: Mapping[str, Mapping[str, tuple]] = key(
        GridPerName(), "values to train every combination of, per method ([method_grid.irm] penalty_weight = "
                       "[1, 10]): each combination is a configuration of its own, for every draw", factory=dict)
    model: str | None = key(Text(), "model for every run (default: the protocol's or the dataset's)")
    device: str = key(Device(), "the device of every run", "cpu")
    data_dir: str | None = key(Text(), "where image datasets look for data")
    executor: ExecutorSettings = key(Section(ExecutorSettings), "the [executor] table", factory=ExecutorSettings)
    source: str = ""  # the file it came from, for messages (not a key)

    @property
    def out_root(self) -> Path:
        return Path(self.out)


# Checking a file --------------------------------------------------------------------------

def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file (or a shipped one by name); ConfigError names the file
    and every bad key."""
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
    problems: list[str] = []
    values = _parse_table(SweepConfig, data, "", problems)
    if "name" not in data:
        name = _check(Word(), default_name, "name (the file's stem, as the file names none)", problems)
        if name is not _BAD:
            values["name"] = name
    values.setdefault("out", f"runs/{values.get('name', default_name)}")
    for table in ("method_hparams", "method_grid"):
        stray = sorted(set(values.get(table, {})) - set(values.get("methods", ())))
        if stray and "methods" in values:
            problems.append(f"[{table}] names {stray}, which are not in methods = {list(values['methods'])}")
    for i, entry in enumerate(values.get("datasets", ())):
        outside = [m for m in entry.methods if m not in values.get("methods", ())]
        if outside and "methods" in values:
            problems.append(f"datasets[{i}].methods names {outside}, which are not in methods = "
                            f"{list(values['methods'])}")
    _raise(problems, source)
    return SweepConfig(**values, source=source)


def _parse_table(cls: type, data: Any, where: str, problems: list[str]) -> dict[str, Any]:
    """The checked values of the keys given in ``data``; each problem is appended, none raised."""
    declared = keys(cls)
    prefix = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        problems.append(f"{where or 'the file'} must be a table; got {data!r}")
        return {}
    for name in data:
        if name not in declared:
            problems.append(prefix + _unknown_key(name, declared))
    values: dict[str, Any] = {}
    for name, declaration in declared.items():
        if name not in data:
            if declaration.required:
                problems.append(f"{prefix}{name} is missing ({declaration.doc})")
            continue
        rule, value = declaration.rule, data[name]
        if isinstance(rule, Section):
            nested = _parse_table(rule.cls, value, _nested(where, name), problems)
            values[name] = rule.cls(**nested)
        elif isinstance(rule, Sections):
            if not isinstance(value, list) or not value:
                problems.append(f"{prefix}{name} must be {rule.allowed}, each with a name")
                continue
            entries = []
            for i, item in enumerate(value):
                label = f"[[{rule.title}]] #{i + 1}"
                before = len(problems)
                nested = _parse_table(rule.cls, item, label, problems)
                if len(problems) == before:
                    entries.append(rule.cls(**nested))
            values[name] = tuple(entries)
        else:
            checked = _check(rule, value, prefix + name, problems)
            if checked is not _BAD:
                values[name] = checked
    return values


_BAD = object()


def _check(rule: Rule, value: Any, label: str, problems: list[str]) -> Any:
    try:
        return rule.check(value)
    except Invalid as exc:
        problems.append(f"{label} {exc}")
        return _BAD


def _check_given(rule: Rule, value: Any, label: str, problems: list[str]) -> Any:
    """A flag's value: text from the command line is converted by the rule, other values checked."""
    try:
        return rule.from_text(value) if isinstance(value, str) else rule.check(value)
    except Invalid as exc:
        problems.append(f"{label} {exc}")
        return _BAD


def _nested(where: str, name: str) -> str:
    return f"[{where.strip('[]')}.{name}]" if where else f"[{name}]"


def _unknown_key(name: str, declared: Mapping[str, Key]) -> str:
    lowered = {k.lower(): k for k in declared}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return f"unknown key {name!r}. Did you mean {lowered[close[0]]!r}?"
    return f"unknown key {name!r}; allowed: {', '.join(declared)}"


def _raise(problems: list[str], source: str) -> None:
    """One ConfigError with every problem: one line each."""
    if not problems:
        return
    where = f"{source}: " if source else ""
    if len(problems) == 1:
        raise ConfigError(f"{where}{problems[0]}")
    listing = "\n".join(f"  {p}" for p in problems)
    raise ConfigError(f"{where}{len(problems)} problems:\n{listing}")


# Command-line overrides -------------------------------------------------------------------

SWEEP_FLAGS = ("out", "steps", "eval_every", "trials", "hparam_draws", "device", "data_dir", "methods")
EXECUTOR_FLAGS = {"executor": "kind", "workers": "workers", "threads": "threads", "runs_per_task": "runs_per_task",
                  "pack_size": "pack_size"}
# The [executor.slurm] keys that --slurm KEY=VALUE can set (lists and tables need the file).
SLURM_FLAG_KEYS = tuple(name for name, k in keys(SlurmSettings).items() if not isinstance(k.rule, (Strings, Table)))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def apply_overrides(config: SweepConfig, **flags: Any) -> SweepConfig:
    """Flags given on the command line (None = not given) win over the file; each is checked
    by its key's rule, and every bad flag is reported at once.

    Sweep-level: out, steps, eval_every, trials, hparam_draws, device, data_dir, methods.
    Executor: executor (kind), workers, threads, runs_per_task, pack_size; slurm: a dict of
    [executor.slurm] keys to values. Strings (KEY=VALUE, --pack-size 8) are converted by the
    key's rule.
    """
    problems: list[str] = []
    sweep_keys, executor_keys, slurm_keys = keys(SweepConfig), keys(ExecutorSettings), keys(SlurmSettings)
    top = {}
    for name in SWEEP_FLAGS:
        value = flags.pop(name, None)
        if value is not None:
            top[name] = _check(sweep_keys[name].rule, value, flag(name), problems)
    executor = {}
    for name, field_name in EXECUTOR_FLAGS.items():
        value = flags.pop(name, None)
        if value is not None:
            executor[field_name] = _check_given(executor_keys[field_name].rule, value, flag(name), problems)
    slurm = {}
    for name, value in (flags.pop("slurm", None) or {}).items():
        if name not in slurm_keys:
            problems.append("--slurm: " + _unknown_key(name, {k: slurm_keys[k] for k in SLURM_FLAG_KEYS}))
            continue
        checked = _check_given(slurm_keys[name].rule, value, f"--slurm {name}", problems)
        if checked is not _BAD:
            slurm[name] = checked
    leftover = sorted(k for k, v in flags.items() if v is not None)
    if leftover:
        problems.append(f"unknown sweep override(s) {leftover}")
    _raise(problems, "")
    if slurm:
        executor["slurm"] = dataclasses.replace(config.executor.slurm, **slurm)
    if executor:
        top["executor"] = dataclasses.replace(config.executor, **executor)
    return dataclasses.replace(config, **top)
