"""Protocols: a paper's training setup, one checked object per dataset and method family.

A protocol holds what a paper fixed or tuned for the datasets it was made for: the
hyperparameter defaults and search ranges (for every method, and per named method), the
number of steps, the evaluation interval, the model, the model selection it reports, and
where we deviate from it. A dataset names its own protocol (``protocol = "irm-paper"``); a
run or sweep may choose another by name (``--protocol``, the sweep file's ``preset``), and
is warned when the dataset is not one the protocol was made for.

Values apply per named method, never by a hyperparameter's name: a new method built on
the penalty schedule keeps its own defaults instead of inheriting IRMv1's tuned weight.
Every key is checked against what the method (or the training loop, or the model) declares,
so a misspelt key is an error naming the key, the method and what is allowed; and every
default a protocol sets must lie inside its search range, so that hyperparameter draws
explore around the default rather than only on one side of it.

The shipped protocols are in ``invbench.paper_protocols``; a plugin module (named in
``INVBENCH_PLUGINS``) registers its own with ``register(Protocol(...))``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from invbench.errors import ConfigError
from invbench.hparams import ARCHITECTURE_HPARAMS, TRAINING_HPARAMS, HParam, check_names, validate_overrides
from invbench.registry import Registry

PROTOCOLS: Registry = Registry("protocol", "invbench.paper_protocols")


class ProtocolWarning(UserWarning):
    """A protocol chosen for a dataset it was not made for."""


@dataclass(frozen=True)
class Protocol:
    name: str  # lower case, e.g. "irm-paper"
    description: str  # one line: what it is and the paper it comes from
    datasets: tuple[str, ...]  # the datasets it was made for
    # Training and model hyperparameters for every method (lr, batch_size, hidden_dim, ...)
    # and their searches (a distribution, or None: the default in every draw).
    hparams: Mapping[str, Any] = field(default_factory=dict)
    search: Mapping[str, Any] = field(default_factory=dict)
    # Per named method: its own hyperparameters and training ones; win over the above.
    method_hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    method_search: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    steps: int | None = None  # None: the dataset's default
    eval_every: int | None = None
    model: str | None = None  # None: the dataset's model
    # Per named method: its own model and number of steps (the IRM paper's grayscale oracle
    # is a narrower colour-blind MLP trained 100 steps); win over model and steps.
    method_models: Mapping[str, str] = field(default_factory=dict)
    method_steps: Mapping[str, int] = field(default_factory=dict)
    selection: str | None = None  # the model selection the paper reports (invbench collect -s)
    deviations: tuple[str, ...] = ()  # where this protocol departs from the paper, and why

    def __post_init__(self) -> None:
        # read-only all the way down: a protocol is shared by every run that uses it
        freeze = lambda m: MappingProxyType(dict(m))
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "deviations", tuple(self.deviations))
        object.__setattr__(self, "hparams", freeze(self.hparams))
        object.__setattr__(self, "search", freeze(self.search))
        object.__setattr__(self, "method_hparams", freeze({k: freeze(v) for k, v in self.method_hparams.items()}))
        object.__setattr__(self, "method_search", freeze({k: freeze(v) for k, v in self.method_search.items()}))
        object.__setattr__(self, "method_models", freeze(self.method_models))
        object.__setattr__(self, "method_steps", freeze(self.method_steps))

    def values_for(self, method: str) -> dict[str, Any]:
        """The defaults this protocol sets for one method: every method's, then the method's own."""
        return {**self.hparams, **self.method_hparams.get(method, {})}

    def search_for(self, method: str) -> dict[str, Any]:
        return {**self.search, **self.method_search.get(method, {})}

    def model_for(self, method: str) -> str | None:
        """The model this protocol trains ``method`` with (None: the dataset's)."""
        return self.method_models.get(method, self.model)

    def steps_for(self, method: str) -> int | None:
        return self.method_steps.get(method, self.steps)


def register(protocol: Protocol) -> Protocol:
    """Register a protocol under its name (checked in full when first used)."""
    PROTOCOLS.register(protocol.name)(protocol)
    return protocol


_checked: dict[int, Protocol] = {}  # by id; the value keeps the id from being reused


def get_protocol(name: str) -> Protocol:
    """The registered protocol of that name, checked against the methods, datasets and models."""
    protocol = PROTOCOLS.get(name)
    if _checked.get(id(protocol)) is not protocol:
        check_protocol(protocol)
        _checked[id(protocol)] = protocol
    return protocol


def check_protocol(protocol: Protocol) -> None:
    """Raise ConfigError for anything a protocol names that does not exist or is out of range."""
    from invbench.models import MODELS
    from invbench.registry import DATASETS, METHODS

    where = f"protocol {protocol.name!r}"
    shared = {**TRAINING_HPARAMS, **ARCHITECTURE_HPARAMS}
    validate_overrides(shared, protocol.hparams, f"every method in {where} (method hyperparameters "
                                                 f"go under method_hparams)")
    _check_search(shared, protocol.search, f"every method in {where}")
    for method in sorted({*protocol.method_hparams, *protocol.method_search, *protocol.method_models,
                          *protocol.method_steps}):
        if method not in METHODS:
            raise ConfigError(f"{where} names method {method!r}, which is not registered; "
                              f"registered methods: {', '.join(METHODS.names())}")
        space = {**shared, **METHODS.get(method).hparams}
        validate_overrides(space, protocol.method_hparams.get(method, {}), f"method {method!r} in {where}")
        _check_search(space, protocol.method_search.get(method, {}), f"method {method!r} in {where}")
    unknown = [d for d in protocol.datasets if d not in DATASETS]
    if unknown or not protocol.datasets:
        raise ConfigError(f"{where} must name the datasets it was made for; unknown: {unknown}; "
                          f"registered datasets: {', '.join(DATASETS.names())}")
    for model in (protocol.model, *protocol.method_models.values()):
        if model is not None and model not in MODELS:
            raise ConfigError(f"{where}: unknown model {model!r}; allowed: {', '.join(sorted(MODELS))}")
    from invbench.results.selection import SELECTIONS

    if protocol.selection is not None and protocol.selection not in SELECTIONS:
        raise ConfigError(f"{where}: unknown selection {protocol.selection!r}; allowed: {', '.join(SELECTIONS)}")
    counts = [("steps", protocol.steps), ("eval_every", protocol.eval_every),
              *((f"method_steps[{m!r}]", v) for m, v in protocol.method_steps.items())]
    for key, value in counts:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}: {key} must be an integer >= 1; got {value!r}")


def _check_search(space: Mapping[str, HParam], search: Mapping[str, Any], owner: str) -> None:
    check_names(space, search, owner)
    for name, distribution in search.items():
        if distribution is not None and not (hasattr(distribution, "sample") and hasattr(distribution, "contains")):
            raise ConfigError(f"{owner}: the search of {name} must be a distribution from invbench.hparams "
                              f"(LogUniform, OneMinusLogUniform, Uniform, RandInt, Choice, Fixed) or None; "
                              f"got {distribution!r}")


def method_space(method_cls: type, method: str, protocol: Protocol | None, model_hparams: tuple[str, ...]
                 ) -> dict[str, HParam]:
    """The hyperparameters of one method under a protocol, for a model that reads ``model_hparams``.

    Training hyperparameters first, then the model's, then the method's; the protocol's
    values and searches replace the declared ones. A full-batch default stays full batch in
    every draw (a drawn batch could exceed an environment, and would change the protocol).
    """
    overlap = set(TRAINING_HPARAMS) & set(method_cls.hparams) | set(ARCHITECTURE_HPARAMS) & set(method_cls.hparams)
    if overlap:
        raise ConfigError(f"method {method!r} redeclares training or model hyperparameters {sorted(overlap)}")
    declared = {**TRAINING_HPARAMS, **{n: ARCHITECTURE_HPARAMS[n] for n in model_hparams}, **method_cls.hparams}
    values = protocol.values_for(method) if protocol else {}
    searches = protocol.search_for(method) if protocol else {}
    space = {}
    for name, hp in declared.items():
        if name in values:
            hp = dataclasses.replace(hp, default=hp.validate(name, values[name]))
        if name in searches:
            hp = dataclasses.replace(hp, search=searches[name])
        if name == "batch_size" and hp.default == 0:
            hp = dataclasses.replace(hp, search=None)
        if (name in values or name in searches) and not _inside_search(hp):
            raise ConfigError(
                f"protocol {protocol.name!r}: {name}={hp.default!r} for method {method!r} lies outside its "
                f"search {hp.search}; draws must explore around the default: widen the search or change the default")
        space[name] = hp
    return space


def _inside_search(hp: HParam) -> bool:
    """The default lies inside the search, so draws explore around it. A default of 0 switches
    a regulariser off (l2, weight decay): draws then search it switched on, on a log scale."""
    if hp.search is None or (isinstance(hp.default, (int, float)) and hp.default == 0):
        return True
    return hp.search.contains(hp.default)


def warn_if_foreign(protocol: Protocol, dataset: str, own: str | None) -> None:
    """One line when a protocol is used on a dataset it was not made for."""
    if protocol.name != own and dataset not in protocol.datasets:
        warnings.warn(f"protocol {protocol.name!r} was made for {', '.join(protocol.datasets)}, not {dataset!r}: "
                      f"its values were tuned for other data", ProtocolWarning, stacklevel=3)
