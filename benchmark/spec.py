"""The run spec: everything that decides a run's numbers, with a stable id.

The id is a hash of the spec's canonical JSON without machine-specific fields (data
directory, device), so moving the data or switching GPU never orphans results.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

from invbench.errors import ConfigError
from invbench.hparams import ARCHITECTURE_HPARAMS, HParam, draw, validate_overrides
from invbench.registry import DATASETS, METHODS
from invbench.sufficient import EXAMPLES, check_train_data


class HParamWarning(UserWarning):
    """A valid but probably unintended setting (a penalty that never switches on)."""


MACHINE = {"machine": True}  # field metadata: not part of the id
ONLY_WHEN_SET = {"only_when_set": True}  # field metadata: part of the id unless at its default
SPEC_VERSION = 1  # bump when the meaning of a field changes, so old ids are not reused


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    method: str
    dataset_options: Mapping[str, Any]
    hparams: Mapping[str, Any]
    test_envs: tuple[int, ...]
    trial: int  # the data seed: decides the dataset's random realisation
    hparams_seed: int  # which hyperparameter draw (0 = defaults)
    steps: int
    eval_every: int
    holdout_fraction: float
    model: str
    # "sufficient_statistics": train on each environment's moments, exact for squared-error
    # linear models (invbench.sufficient); in the id only when set, so older ids stand
    train_data: str = field(default=EXAMPLES, metadata=ONLY_WHEN_SET)
    data_dir: str | None = field(default=None, metadata=MACHINE)
    device: str = field(default="auto", metadata=MACHINE)

    def identity(self) -> dict[str, Any]:
        """The fields that decide the numbers: what the id hashes."""
        out = {"spec_version": SPEC_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("machine") or (f.metadata.get("only_when_set") and value == f.default):
                continue
            out[f.name] = _plain(value)
        return out

    def canonical_json(self) -> str:
        return json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))

    @functools.cached_property  # computed once: a spec is never changed after it is made
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def short_id(self) -> str:
        return self.run_id[:10]

    @property
    def data_key(self) -> str:
        """What decides the data a run is built on (not the trial: sources and sizes do not
        depend on it), for building each distinct dataset once."""
        return repr((self.dataset, sorted(self.dataset_options.items()), self.holdout_fraction, self.data_dir,
                     self.uses_oracle_data))

    @property
    def uses_oracle_data(self) -> bool:
        """Whether the run trains on its dataset's oracle data (method ``oracle``)."""
        return self.method in METHODS and METHODS.get(self.method).trains_on_oracle_data

    @property
    def dirname(self) -> str:
        tests = "_".join(map(str, self.test_envs)) or "none"
        name = f"{self.dataset}-{self.method}-test{tests}-trial{self.trial}-hp{self.hparams_seed}-{self.short_id}"
        return re.sub(r"[^A-Za-z0-9._-]", "_", name)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["run_id"] = self.run_id
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["test_envs"] = tuple(kwargs.get("test_envs", ()))
        kwargs["dataset_options"] = _freeze(kwargs.get("dataset_options", {}))
        kwargs["hparams"] = dict(kwargs.get("hparams", {}))
        return cls(**kwargs)

    def with_machine(self, data_dir: str | None = None, device: str | None = None) -> "RunSpec":
        return dataclasses.replace(self, data_dir=data_dir if data_dir is not None else self.data_dir,
                                   device=device if device is not None else self.device)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _freeze(options: Mapping[str, Any]) -> dict[str, Any]:
    # JSON turns tuples into lists; options are declared as tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def hparam_space(method: str, dataset: str, *, protocol: str | None = None, model: str | None = None
                 ) -> dict[str, HParam]:
    """The hyperparameters of ``method`` on ``dataset``: the training ones, the model's and the
    method's, with the protocol's defaults and searches applied (invbench.protocol).

    ``protocol`` names one other than the dataset's own; ``model`` one other than the
    protocol's or the dataset's. Only the hyperparameters the model reads are included.
    """
    family = DATASETS.get(dataset)
    chosen = _protocol(family, protocol)
    return _space(method, chosen, model or _model(family, chosen, family.resolve_options(None), method))


def _protocol(family, name: str | None):
    from invbench.protocol import get_protocol

    name = name or family.protocol
    return get_protocol(name) if name else None


def _model(family, protocol, options: Mapping[str, Any], method: str) -> str:
    return (protocol.model_for(method) if protocol is not None else None) or family.model_for(options)


def _space(method: str, protocol, model: str) -> dict[str, HParam]:
    from invbench.models import MODEL_HPARAMS, MODELS
    from invbench.protocol import method_space

    MODELS.get(model)  # an unknown name: the registry's error, with its close matches
    return method_space(METHODS.get(method), method, protocol, MODEL_HPARAMS.get(model, ()))


def check_oracle(method: str, method_cls: type, family: type) -> None:
    """A method that trains on oracle data needs a dataset that defines it: say which do."""
    if not method_cls.trains_on_oracle_data or family.oracle is not None:
        return
    having = [name for name in DATASETS.names() if DATASETS.get(name).oracle is not None]
    raise ConfigError(f"method {method!r} trains on a dataset's oracle data (its spurious signal removed), and "
                      f"dataset {family.name!r} defines none; datasets that do: {', '.join(having) or 'none'}")


def make_spec(
    dataset: str,
    method: str,
    *,
    dataset_options: Mapping[str, Any] | None = None,
    test_envs: tuple[int, ...] | list[int] | None = None,
    trial: int = 0,
    hparams_seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
    steps: int | None = None,
    eval_every: int | None = None,
    holdout_fraction: float | None = None,
    model: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    train_data: str = EXAMPLES,
) -> RunSpec:
    """Resolve names, options and hyperparameters into a validated spec.

    ``preset`` names a protocol to follow instead of the dataset's own (a warning when the
    dataset is not one it was made for). Hyperparameters: the protocol's defaults (draw 0)
    or draw n of its searches, then the explicit overrides. Steps, evaluation interval and
    model: the explicit value, then the protocol's, then the dataset's. ``train_data``:
    "examples", or "sufficient_statistics" where those are exact (invbench.sufficient).
    """
    from invbench.protocol import warn_if_foreign

    family = DATASETS.get(dataset)
    method_cls = METHODS.get(method)
    options = family.resolve_options(dataset_options)
    if trial < 0:
        raise ConfigError(f"trial (the data seed) must be >= 0; got {trial}")
    protocol = _protocol(family, preset)
    if preset is not None:
        warn_if_foreign(protocol, dataset, family.protocol)
    check_oracle(method, method_cls, family)
    model = model or _model(family, protocol, options, method)
    space = _space(method, protocol, model)
    hparams = draw(space, hparams_seed)
    given = dict(overrides or {})
    for name in sorted(set(given) & set(ARCHITECTURE_HPARAMS) - set(space)):
        from invbench.models import MODEL_HPARAMS  # only for the message

        readers = sorted(m for m, names in MODEL_HPARAMS.items() if name in names)
        raise ConfigError(f"hyperparameter {name!r} does not apply to model {model!r}: "
                          f"only {', '.join(readers) or 'no model'} read it")
    hparams.update(validate_overrides(space, given, f"method {method!r}"))

    protocol_steps = protocol.steps_for(method) if protocol is not None else None
    protocol_eval = protocol.eval_every if protocol is not None else None
    steps = steps if steps is not None else (protocol_steps or family.default_steps)
    eval_every = eval_every if eval_every is not None else min(protocol_eval or family.default_eval_every, steps)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1; got {steps}")
    if eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1; got {eval_every}")
    holdout = family.default_holdout_fraction if holdout_fraction is None else float(holdout_fraction)
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"holdout fraction must be in [0, 1); got {holdout}")
    tests = tuple(sorted(set(family.default_test_envs_for(options) if test_envs is None else test_envs)))
    family.check_test_envs(options, tests)
    check_train_data(train_data, method=method, method_cls=method_cls, hparams=hparams, model=model, task=family.task,
                     batch_size=int(hparams.get("batch_size", 0)))
    for problem in method_cls.check_hparams(hparams, int(steps)):
        warnings.warn(f"{dataset}/{method}: {problem}", HParamWarning, stacklevel=2)
    return RunSpec(
        dataset=dataset,
        method=method,
        dataset_options=options,
        hparams=dict(sorted(hparams.items())),
        test_envs=tests,
        trial=int(trial),
        hparams_seed=int(hparams_seed),
        steps=int(steps),
        eval_every=int(eval_every),
        holdout_fraction=holdout,
        model=model,
        train_data=train_data,
        data_dir=data_dir,
        device=device,
    )
