"""Name -> item registries for methods and datasets.

Items register themselves in the module that defines them (``@METHODS.register("erm")``).
The registry imports every module of its home package (or its home module, for models)
the first time it is asked for a name, so adding a method or dataset is one new file and
nothing else. Extra modules (for
plugins and tests) are imported from the comma-separated ``INVBENCH_PLUGINS`` variable,
which worker processes inherit.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from invbench.errors import ConfigError, UnknownNameError

T = TypeVar("T")

PLUGINS_ENV = "INVBENCH_PLUGINS"


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, also: tuple[str, ...] = ()):
        self.kind = kind  # "method", "dataset", ..., for messages
        self.package = package
        self.also = also  # further packages whose modules may register items too
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        if not name or name != name.strip() or name.lower() != name:
            raise ConfigError(f"{self.kind} names are lower-case without spaces; got {name!r}")

        def decorator(item: T) -> T:
            existing = self._items.get(name)
            if existing is not None and _qualname(existing) != _qualname(item):
                raise ConfigError(
                    f"{self.kind} {name!r} is registered twice: by {_qualname(existing)} "
                    f"and by {_qualname(item)}"
                )
            self._items[name] = item
            try:
                item.name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return item

        return decorator

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for name in (self.package, *self.also):
            package = importlib.import_module(name)
            for info in pkgutil.iter_modules(getattr(package, "__path__", [])):  # a plain module has none
                if not info.name.startswith("_"):
                    importlib.import_module(f"{name}.{info.name}")
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            importlib.import_module(module)

    def get(self, name: str) -> T:
        self.discover()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        names = sorted(self._items)
        # names are lower-case: 'IRM' means 'irm', and only that
        same = [n for n in names if n == name.lower()]
        close = same or difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: {', '.join(names)}."

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._items

    def unregister(self, name: str) -> None:
        """For tests that register throwaway items."""
        self._items.pop(name, None)


def _qualname(item: object) -> str:
    return f"{getattr(item, '__module__', '?')}.{getattr(item, '__qualname__', repr(item))}"


def describe(item: object) -> str:
    """The first line of an item's docstring: its one-line description."""
    doc = (getattr(item, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


METHODS: Registry = Registry("method", "invbench.methods")
DATASETS: Registry = Registry("dataset", "invbench.datasets")
# Builders (input_shape, n_outputs, hparams) -> nn.Module with what they accept: invbench.models.
# A dataset module may register a model of its own (an oracle that only it can use).
MODELS: Registry = Registry("model", "invbench.models", also=("invbench.datasets",))
