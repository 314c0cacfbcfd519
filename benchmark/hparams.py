"""Hyperparameter declarations, seeded draws and validation.

A method declares its hyperparameters next to itself as ``HParam`` objects: a default, a
search distribution and an allowed range. Draw 0 is the defaults; draw n > 0 samples every
hyperparameter from a random state seeded by (n, name), so adding a method or a
hyperparameter never changes the other draws (DomainBed's scheme, without its string
if/elif ladder).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from invbench.errors import ConfigError


# Search distributions -------------------------------------------------------------------

@dataclass(frozen=True)
class Fixed:
    value: Any

    def sample(self, rng: np.random.RandomState) -> Any:
        return self.value

    def contains(self, value: Any) -> bool:
        return value == self.value

    def __str__(self) -> str:
        return f"fixed {self.value!r}"


@dataclass(frozen=True)
class LogUniform:
    """base ** U(low_exp, high_exp): DomainBed's ``10**r.uniform(a, b)``."""

    low_exp: float
    high_exp: float
    base: float = 10.0
    integer: bool = False  # int(base ** U(.)), as the IRM code draws the hidden width

    def sample(self, rng: np.random.RandomState) -> Any:
        value = self.base ** rng.uniform(self.low_exp, self.high_exp)
        return int(value) if self.integer else float(value)

    def contains(self, value: Any) -> bool:
        low, high = self.base ** self.low_exp, self.base ** self.high_exp
        if self.integer:  # int() truncates the draw
            low = math.floor(low)
        return _within(value, low, high)

    def __str__(self) -> str:
        kind = "int " if self.integer else ""
        return f"{kind}{self.base:g}^U({self.low_exp:g}, {self.high_exp:g})"


@dataclass(frozen=True)
class OneMinusLogUniform:
    """1 - base ** U(low_exp, high_exp): a weight close to 1 on a log scale of its distance
    from 1, as the linear unit tests' code draws IRMv1's lambda (``1 - 10**r.uniform(-3, -.3)``)."""

    low_exp: float
    high_exp: float
    base: float = 10.0

    def sample(self, rng: np.random.RandomState) -> float:
        return float(1.0 - self.base ** rng.uniform(self.low_exp, self.high_exp))

    def contains(self, value: Any) -> bool:
        # the larger exponent gives the smaller value
        return _within(value, 1.0 - self.base ** self.high_exp, 1.0 - self.base ** self.low_exp)

    def __str__(self) -> str:
        return f"1 - {self.base:g}^U({self.low_exp:g}, {self.high_exp:g})"


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def sample(self, rng: np.random.RandomState) -> float:
        return float(rng.uniform(self.low, self.high))

    def contains(self, value: Any) -> bool:
        return _within(value, self.low, self.high)

    def __str__(self) -> str:
        return f"U({self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class RandInt:
    """Integers in [low, high), like numpy's randint."""

    low: int
    high: int

    def sample(self, rng: np.random.RandomState) -> int:
        return int(rng.randint(self.low, self.high))

    def contains(self, value: Any) -> bool:
        return _within(value, self.low, self.high - 1)

    def __str__(self) -> str:
        return f"randint({self.low}, {self.high})"


@dataclass(frozen=True)
class Choice:
    options: tuple

    def sample(self, rng: np.random.RandomState) -> Any:
        return self.options[rng.randint(len(self.options))]

    def contains(self, value: Any) -> bool:
        return value in self.options

    def __str__(self) -> str:
        return "choice(" + ", ".join(map(repr, self.options)) + ")"


def _within(value: Any, low: float, high: float) -> bool:
    """low <= value <= high, up to float rounding (10 ** -2.5 printed and read back)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    slack = 1e-9 * max(abs(low), abs(high), 1e-300)
    return low - slack <= value <= high + slack


# Declarations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class HParam:
    """One hyperparameter: default, search distribution, allowed range and meaning."""

    default: Any
    search: Any = None  # a distribution; None means the default is never searched
    low: float | None = None  # allowed range, inclusive
    high: float | None = None
    choices: tuple | None = None
    help: str = ""
    # Changes tensor shapes (batch size, hidden width): runs trained as one pack must share
    # it. Other numbers may differ inside a pack (they become per-run tensors); booleans,
    # choices and tuples must be equal (invbench.packing).
    shapes: bool = False

    @property
    def type(self) -> type:
        return type(self.default)

    def sample(self, rng: np.random.RandomState) -> Any:
        return self.default if self.search is None else self.search.sample(rng)

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices))
        if self.type is bool:
            return "true or false"
        if self.type is tuple:
            return "a comma-separated list like " + ",".join(map(str, self.default))
        spec = "," if self.type is int else "g"  # integers in full: 10,000,000, not 1e+07
        low = "-inf" if self.low is None else format(self.low, spec)
        high = "inf" if self.high is None else format(self.high, spec)
        return f"a{'n integer' if self.type is int else ' number'} in [{low}, {high}]"

    def validate(self, name: str, value: Any, kind: str = "hyperparameter") -> Any:
        """Return ``value`` converted to this declaration's type, or raise ConfigError.

        ``kind`` names what is declared in the messages ("hyperparameter" or "option").
        """
        value = self._convert(name, value, kind)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{kind} {name}={value!r} is not allowed: use {self.allowed()}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high
            ):
                raise ConfigError(f"{kind} {name}={value!r} is out of range: use {self.allowed()}")
        return value

    def _convert(self, name: str, value: Any, what: str) -> Any:
        kind = self.type
        try:
            if kind is bool:
                if isinstance(value, str):
                    lowered = value.strip().lower()
                    if lowered in ("1", "true", "yes", "on"):
                        return True
                    if lowered in ("0", "false", "no", "off"):
                        return False
                    raise ValueError
                if isinstance(value, (bool, int)) and value in (0, 1):
                    return bool(value)
                raise ValueError
            if kind is int:
                if isinstance(value, bool):
                    raise ValueError
                as_float = float(value)
                if as_float != int(as_float):
                    raise ValueError
                return int(as_float)
            if kind is float:
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if kind is tuple:
                return _convert_sequence(value, self.default)
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{what} {name}={value!r} is not {kind.__name__}: use {self.allowed()}"
            ) from None


def _convert_sequence(value: Any, default: tuple) -> tuple:
    """A tuple option from a list, a tuple or a comma-separated string ("0.2,0.1")."""
    if isinstance(value, str):
        value = [part for part in value.replace(" ", "").split(",") if part]
    if not isinstance(value, (list, tuple)):
        raise ValueError
    element = type(default[0]) if default else float
    if element is int:
        return tuple(int(v) if float(v) == int(float(v)) else _raise() for v in value)
    return tuple(element(v) for v in value)


def _raise() -> Any:
    raise ValueError


# Training hyperparameters shared by every method; a protocol may change their defaults.
TRAINING_HPARAMS: dict[str, HParam] = {
    "lr": HParam(1e-3, LogUniform(-4.5, -2.5), low=1e-8, high=10.0, help="Adam learning rate"),
    "weight_decay": HParam(0.0, LogUniform(-6, -2), low=0.0, high=1.0,
                           help="torch Adam's weight_decay (L2 added to the gradient, not in the loss)"),
    "l2": HParam(0.0, LogUniform(-5, -2), low=0.0, high=10.0,
                 help="l2 * sum of squared norms of all parameters, added to the loss (IRM code)"),
    "batch_size": HParam(64, LogUniform(3, 9, base=2, integer=True), low=0, high=1 << 24,
                         help="examples per environment per step; 0 = full batch", shapes=True),
}

# Hyperparameters of a model's architecture. A run draws and records only those its model
# reads (invbench.models.MODEL_HPARAMS): a linear model has no hidden width.
ARCHITECTURE_HPARAMS: dict[str, HParam] = {
    "hidden_dim": HParam(256, LogUniform(6, 9, base=2, integer=True), low=1, high=65536,
                         help="width of the MLP's hidden layers", shapes=True),
}


def seed_hash(*parts: Any) -> int:
    """A stable 31-bit seed from any printable parts (unlike hash(), stable across processes)."""
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def draw(space: Mapping[str, HParam], hparams_seed: int) -> dict[str, Any]:
    """Draw 0 gives the defaults; draw n samples each name from its own seeded state."""
    if hparams_seed < 0:
        raise ConfigError(f"hparams seed must be >= 0; got {hparams_seed}")
    if hparams_seed == 0:
        return {name: hp.default for name, hp in space.items()}
    return {name: hp.default if hp.search is None else _sample(hp.search, hparams_seed, name)
            for name, hp in space.items()}


@functools.lru_cache(maxsize=65536)
def _sample(search: Any, hparams_seed: int, name: str) -> Any:
    """One name's value in one draw, from its own seeded state. Cached: every trial of a
    sweep repeats its draws, and seeding a RandomState costs more than the draw itself."""
    return search.sample(np.random.RandomState(seed_hash(hparams_seed, name)))


def check_names(space: Mapping[str, Any], names: Any, owner: str, kind: str = "hyperparameter") -> None:
    """Raise ConfigError naming every unknown name, its close match, the owner and what is allowed."""
    unknown = sorted(set(names) - set(space))
    if unknown:
        import difflib

        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(space), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"unknown {kind} {', '.join(hints)} for {owner}; allowed: {', '.join(sorted(space))}"
        )


def validate_overrides(space: Mapping[str, HParam], overrides: Mapping[str, Any], owner: str,
                       kind: str = "hyperparameter") -> dict:
    """Validated, converted values; a ConfigError names the owner, the value and what is allowed."""
    check_names(space, overrides, owner, kind)
    values = {}
    for name, value in overrides.items():
        try:
            values[name] = space[name].validate(name, value, kind)
        except ConfigError as exc:
            raise ConfigError(f"{owner}: {exc}") from None
    return values
