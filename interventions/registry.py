"""One registry class for everything named: combines, maps, backends, zoo models, model families,
tasks, protocols, spec kinds, controls.

Names map to objects. An unknown name raises the registry's error with close names suggested.
Registering a name twice from two different places is refused, naming both; re-registering it
from the same place (a plugin file imported again) replaces the entry.
"""

from __future__ import annotations

import sys
from typing import Generic, Iterator, TypeVar

from .errors import DuplicateNameError, InterventionError, suggest

T = TypeVar("T")


def _origin(obj, depth: int) -> str:
    """Where ``obj`` was defined (file and qualified name), or else the registering caller's file."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    qualname = getattr(obj, "__qualname__", None)
    if module is not None and qualname and not isinstance(obj, type(sys)):
        return f"{getattr(module, '__file__', module.__name__)}:{qualname}"
    frame = sys._getframe(depth)
    return frame.f_globals.get("__file__") or frame.f_globals.get("__name__", "?")


class Registry(Generic[T]):
    def __init__(self, what: str, error: type[Exception] = InterventionError, hint: str = ""):
        self.what = what          # "combine function", "protocol", ...
        self.error = error        # raised for unknown names; takes one message argument
        self.hint = hint          # how to add one, appended to the unknown-name message
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, origin: str | None = None):
        """``registry.register(name, obj)``, or ``@registry.register(name)`` as a decorator."""
        if obj is not None:
            return self._add(name, obj, origin or _origin(obj, 2))
        return lambda target: self._add(name, target, origin or _origin(target, 2))

    def _add(self, name: str, obj: T, origin: str) -> T:
        if not isinstance(name, str) or not name:
            raise InterventionError(f"a {self.what} needs a non-empty string name, got {name!r}")
        if name in self._items and self._origins[name] != origin:
            raise DuplicateNameError(f"{self.what} {name!r} is registered twice: by {self._origins[name]} "
                                     f"and by {origin}. Rename one of them.")
        self._items[name] = obj
        self._origins[name] = origin
        return obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(self.unknown_message(name)) from None

    def unknown_message(self, name) -> str:
        known = sorted(self._items)
        return (f"unknown {self.what} {name!r}.{suggest(str(name), known)} Known: {', '.join(known)}."
                + (f" {self.hint}" if self.hint else ""))

    def origin(self, name: str) -> str:
        return self._origins[name]

    def names(self) -> list[str]:
        return list(self._items)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()

    def __contains__(self, name) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __delitem__(self, name: str) -> None:
        del self._items[name]
        del self._origins[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<{self.what} registry: {', '.join(self._items)}>"

