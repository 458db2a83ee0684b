"""Controls: what replaces a channel's message to show whether the message itself matters.

A control is a function ``(message (n, d), key) -> (n, d)`` registered by name; ``key`` (the
source prompt) seeds it, so a control is the same on every run and resume. The harness adds
``mismatched`` (the message of another item of the task), which swaps sources rather than vectors.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch

from .errors import InterventionError
from .registry import Registry


class UnknownControlError(InterventionError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


CONTROLS: Registry[Callable[[torch.Tensor, str], torch.Tensor]] = Registry("control", UnknownControlError)


def register_control(name: str):
    return CONTROLS.register(name)


def apply_control(name: str, message: torch.Tensor, key: str) -> torch.Tensor:
    return CONTROLS.get(name)(message, key)


@register_control("none")
def no_control(message: torch.Tensor, key: str) -> torch.Tensor:
    return message


@register_control("zero")
def zero_control(message: torch.Tensor, key: str) -> torch.Tensor:
    return torch.zeros_like(message)


@register_control("random")
def random_control(message: torch.Tensor, key: str) -> torch.Tensor:
    """A random direction per position with the norm of the real message at that position."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % (2 ** 63)
    noise = torch.randn(message.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    norms = torch.linalg.vector_norm(message.float(), dim=-1, keepdim=True)
    noise = noise.to(message.device)   # drawn on the CPU, so a seed gives the same vector on every device
    return (noise / torch.linalg.vector_norm(noise, dim=-1, keepdim=True) * norms).to(message.dtype)
