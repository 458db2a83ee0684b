"""What an image sends: an encoder's features at one layer as k tokens, computed once per image.

``ImageLatents`` names the read (encoder, layer, pool, k); ``latents(encoder, read, keys, images)`` returns
(N, k, d) features, kept per process by (encoder weights, read, image key), so the six question kinds of
one scene, and every channel reading it, pay for one encoder forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .encoders import ImageEncoder, pool_tokens

_KEPT: dict[tuple, torch.Tensor] = {}


@dataclass(frozen=True)
class ImageLatents:
    layer: int = -1
    pool: str = "patches"      # cls, mean (one token) or patches (k pooled patch tokens)
    k: int = 4

    @property
    def tokens(self) -> int:
        return self.k if self.pool == "patches" else 1

    def describe(self, encoder: ImageEncoder) -> str:
        return f"{encoder.name} layer {encoder.layer_index(self.layer)} {self.pool}" + (
            f" k={self.k}" if self.pool == "patches" else "")


def latents(encoder: ImageEncoder, read: ImageLatents, keys: list[str], images: Callable[[list[int]], list],
            batch_size: int = 32) -> torch.Tensor:
    """(N, tokens, d) fp32 features of the images named by ``keys``; ``images(indices)`` renders or loads
    the ones not kept yet."""
    index = encoder.layer_index(read.layer)
    tag = (encoder.identity, index, read.pool, read.tokens)
    missing = [i for i, key in enumerate(keys) if (*tag, key) not in _KEPT]
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        states = encoder.hidden_states(images(chunk), batch_size)[index]
        pooled = pool_tokens(states, read.pool, read.k, encoder.has_cls, encoder.name)
        for i, row in zip(chunk, pooled if pooled.ndim == 3 else pooled[:, None]):
            _KEPT[(*tag, keys[i])] = row.clone()
    return torch.stack([_KEPT[(*tag, key)] for key in keys])
