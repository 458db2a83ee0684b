"""Combine functions ``f(target, source) -> new target activation``, by name.

Both arguments are ``(batch, n_positions, d)`` tensors (the source already mapped into the
target's space); the result has the target's shape. Register your own with
``@register_combine("name")``; specs refer to it by that name.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import UnknownCombineError
from .registry import Registry

CombineFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
COMBINES: Registry[CombineFn] = Registry("combine function", UnknownCombineError,
                                         "Add one with @interventions.register_combine(name).")


def register_combine(name: str) -> Callable[[CombineFn], CombineFn]:
    return COMBINES.register(name)


def get_combine(name: str) -> CombineFn:
    return COMBINES.get(name)


@register_combine("sum")
def combine_sum(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return target + source


@register_combine("mean")
def combine_mean(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return (target + source) / 2


@register_combine("replace")
def combine_replace(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return source.expand_as(target).clone()
