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
from invbench.hparams import TRAINING_HPARAMS, HParam, draw, validate_overrides
from invbench.registry import DATASETS, METHODS

class HParamWarning(UserWarning):
    """A valid but probably unintended setting (a penalty that never switches on)."""


MACHINE = {"machine": True}  # field metadata: not part of the id
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
    data_dir: str | None = field(default=None, metadata=MACHINE)
    device: str = field(default="auto", metadata=MACHINE)

    def identity(self) -> dict[str, Any]:
        """The fields that decide the numbers: what the id hashes."""
        out = {"spec_version": SPEC_VERSION}
        for f in dataclasses.fields(self):
            if not f.metadata.get("machine"):
                out[f.name] = _plain(getattr(self, f.name))
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


def hparam_space(method: str, dataset: str) -> dict[str, HParam]:
    """Training hyperparameters followed by the method's, with the dataset's protocol applied.

    A dataset may change any hyperparameter's default (``hparam_defaults``) and search
    (``hparam_search``: a distribution, or None to keep the default in every draw), for
    the training hyperparameters and for method hyperparameters alike (the IRM protocol
    searches the penalty weight in 10^U(2, 6)); names the method does not have are ignored.
    """
    method_cls = METHODS.get(method)
    family = DATASETS.get(dataset)
    overlap = set(TRAINING_HPARAMS) & set(method_cls.hparams)
    if overlap:
        raise ConfigError(f"method {method!r} redeclares training hyperparameters {sorted(overlap)}")
    space = {}
    for name, hp in {**TRAINING_HPARAMS, **method_cls.hparams}.items():
        if name in family.hparam_defaults:
            hp = dataclasses.replace(hp, default=family.hparam_defaults[name])
        if name in family.hparam_search:
            hp = dataclasses.replace(hp, search=family.hparam_search[name])
        if name == "batch_size" and hp.default == 0:
            # a full-batch protocol stays full batch in every draw (a drawn batch could
            # exceed its environments, and would change the protocol)
            hp = dataclasses.replace(hp, search=None)
        space[name] = hp
    return space


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
) -> RunSpec:
    """Resolve names, options and hyperparameters into a validated spec.

    Precedence for hyperparameters: the draw (0 = defaults), then the preset, then the
    explicit overrides.
    """
    from invbench.models import MODELS

    family = DATASETS.get(dataset)
    method_cls = METHODS.get(method)
    options = family.resolve_options(dataset_options)
    if trial < 0:
        raise ConfigError(f"trial (the data seed) must be >= 0; got {trial}")
    space = hparam_space(method, dataset)
    hparams = draw(space, hparams_seed)
    preset_values: dict[str, Any] = {}
    if preset is not None:
        presets = getattr(method_cls, "presets", {})
        if preset not in presets:
            allowed = ", ".join(sorted(presets)) or "none"
            raise ConfigError(f"method {method!r} has no preset {preset!r}; its presets: {allowed}")
        preset_values = dict(presets[preset])
    preset_steps = preset_values.pop("steps", None)
    hparams.update(validate_overrides(space, preset_values, f"method {method!r}"))
    hparams.update(validate_overrides(space, dict(overrides or {}), f"method {method!r}"))

    steps = steps if steps is not None else (preset_steps or family.default_steps)
    eval_every = eval_every if eval_every is not None else min(family.default_eval_every, steps)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1; got {steps}")
    if eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1; got {eval_every}")
    holdout = family.default_holdout_fraction if holdout_fraction is None else float(holdout_fraction)
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"holdout fraction must be in [0, 1); got {holdout}")
    tests = tuple(sorted(set(family.default_test_envs_for(options) if test_envs is None else test_envs)))
    family.check_test_envs(options, tests)
    model = model or family.model_for(options)
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; allowed: {', '.join(sorted(MODELS))}")
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
        data_dir=data_dir,
        device=device,
    )
