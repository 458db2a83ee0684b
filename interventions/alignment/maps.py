"""The registry of map kinds, and the two that fit nothing: ``none`` and ``trailing``.

A map kind is a function ``(source, source_layer, target, target_layer, align) -> map``; a map is
called on (..., d_source) tensors and describes itself (``describe() -> dict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..registry import Registry
from .errors import UnknownMapError

MAPS: Registry[Callable] = Registry("alignment map", UnknownMapError,
                                    "Register one with @interventions.register_map(name).")


def register_map(name: str):
    return MAPS.register(name)


@dataclass(frozen=True)
class Identity:
    """No map. ``trailing``: a width mismatch is combined on the trailing coordinates (AC's rule)."""

    trailing: bool = False

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return acts

    def describe(self) -> dict:
        return {"kind": "trailing" if self.trailing else "none"}


register_map("none")(lambda source, k, target, j, align: Identity())
register_map("trailing")(lambda source, k, target, j, align: Identity(trailing=True))
