"""Combine functions f(target, source) -> new target activation, by name.

Register your own with ``@register_combine("name")``; specs refer to it by that name.
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import UnknownCombineError, suggest

CombineFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
COMBINES: dict[str, CombineFn] = {}


def register_combine(name: str) -> Callable[[CombineFn], CombineFn]:
    def decorate(fn: CombineFn) -> CombineFn:
        COMBINES[name] = fn
        return fn
    return decorate


def get_combine(name: str) -> CombineFn:
    try:
        return COMBINES[name]
    except KeyError:
        raise UnknownCombineError(
            f"unknown combine function {name!r}.{suggest(name, list(COMBINES))} "
            f"Known: {', '.join(sorted(COMBINES))}; add one with @interventions.register_combine(name)."
        ) from None


@register_combine("sum")
def combine_sum(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return target + source


@register_combine("mean")
def combine_mean(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return (target + source) / 2


@register_combine("replace")
def combine_replace(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return source.expand_as(target).clone()
