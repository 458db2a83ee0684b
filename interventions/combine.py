"""Combine functions ``f(target, source) -> new target activation``, by name.

Both arguments are ``(batch, n_positions, d)`` tensors (the source already mapped into the
target's space); the result has the target's shape. Register your own with
``@register_combine("name")``; specs refer to it by that name.

An entry may also be a ``Merge``: a combine with parameters (a splice's ``combine_args``) that may
need corpus statistics of the place it acts on. A splice builds it from its arguments and binds it
to that place (models, layers, map), which gives ``f(target, source)``. The redundancy-aware merges
of ``interventions.merges`` are of this kind.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, ClassVar

import torch

from .errors import SpecFormatError, UnknownCombineError, suggest
from .registry import Registry

CombineFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
COMBINES: Registry[Any] = Registry("combine function", UnknownCombineError,
                                   "Add one with @interventions.register_combine(name).")


class Merge:
    """Base of combines with parameters: a frozen dataclass whose fields are the parameters.

    Subclass it as ``@register_combine(name)`` over ``@dataclass(frozen=True)``, declare typed fields
    with defaults, and implement ``bind(context)``, which returns ``f(target, source)`` for one
    place (``context`` says where: see ``interventions.merges.MergeContext``). Field types (float,
    int, bool) are checked on construction; ``check`` refuses values out of range.
    """

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, self._typed(f.name, getattr(self, f.name), hints[f.name]))
        self.check()

    def _typed(self, name: str, value, hint):
        wrong = lambda what: SpecFormatError(  # noqa: E731
            f"merge {self.name!r}: parameter {name!r} must be {what}, got {value!r}")
        if hint is bool:
            if not isinstance(value, bool):
                raise wrong("true or false")
        elif hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise wrong("an integer")
        elif hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise wrong("a finite number")
            value = float(value)
        return value

    def check(self) -> None:
        """Refuse parameter values out of range with ``SpecFormatError``."""

    def refuse(self, message: str) -> SpecFormatError:
        return SpecFormatError(f"merge {self.name!r}: {message}")

    def bind(self, context) -> CombineFn:
        raise NotImplementedError

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Parameter names and their defaults."""
        return {f.name: f.default for f in dataclasses.fields(cls)}


def is_merge(entry) -> bool:
    return isinstance(entry, type) and issubclass(entry, Merge)


def register_combine(name: str) -> Callable:
    """``@register_combine(name)`` on a function ``f(target, source)`` or on a ``Merge`` dataclass."""
    def decorate(entry):
        if is_merge(entry):
            entry.name = name
        return COMBINES.register(name, entry)
    return decorate


def get_combine(name: str):
    return COMBINES.get(name)


def merges_taking(parameter: str) -> list[str]:
    """Names of the registered merges that declare ``parameter``."""
    return [name for name, entry in COMBINES.items() if is_merge(entry) and parameter in entry.parameters()]


def check_combine_args(name: str, args) -> None:
    """Refuse ``args`` the combine ``name`` does not declare (naming close ones) or values it refuses."""
    entry = COMBINES.get(name)
    if not isinstance(args, dict):
        raise SpecFormatError(f"combine_args must map parameter names to values, got {args!r}")
    if not is_merge(entry):
        if args:
            takers = sorted({m for key in args for m in merges_taking(key)})
            raise SpecFormatError(f"combine {name!r} takes no parameters, got {', '.join(map(repr, args))}"
                                  + (f"; merges that take them: {', '.join(takers)}" if takers else ""))
        return
    known = list(entry.parameters())
    for key in args:
        if key not in known:
            raise SpecFormatError(f"unknown parameter {key!r} for merge {name!r}.{suggest(str(key), known)} "
                                  f"Parameters: {', '.join(known)}.")
    try:
        entry(**args)
    except TypeError as error:   # a merge with a parameter that has no default
        raise SpecFormatError(f"merge {name!r}: {error}") from None


def build_combine(name: str, args: dict, context) -> CombineFn:
    """The combine ``name`` as ``f(target, source)``: a function as registered, a merge built from
    ``args`` and bound to ``context``."""
    entry = COMBINES.get(name)
    return entry(**args).bind(context) if is_merge(entry) else entry


@register_combine("sum")
def combine_sum(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return target + source


@register_combine("mean")
def combine_mean(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return (target + source) / 2


@register_combine("replace")
def combine_replace(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return source.expand_as(target).clone()
