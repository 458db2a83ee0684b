"""The Interlat communication adapter: A's last-layer trajectory in, B's input embeddings out.

Layer norm, one self-attention layer (residual), a residual MLP whose branch is weighted by a
learnable scale, a projection into B's input-embedding width, optional compression to K latent
steps, and a clamp on every output vector's norm (Du et al., 2026, describe the adapter as
attention plus projection that rescales magnitudes so B can read the latents; their released
code adds the layer norms and the scaled residual projection).

Compression is parameter-free segment pooling after attention: the trajectory of L states is cut
into K contiguous segments (segment k covers positions floor(kL/K) .. floor((k+1)L/K) - 1) and each
becomes the mean of its adapted states. Attention has already mixed information across the whole
trajectory, so every pooled step can carry more than its own segment, and segment k still stands
for the plan tokens it covers, which the text-to-latent curriculum needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import InterventionError


class AdapterConfigError(InterventionError, ValueError):
    pass


@dataclass(frozen=True)
class AdapterConfig:
    d_source: int                 # A's hidden width
    d_target: int                 # B's input-embedding width
    bound: float                  # largest norm of an output vector (from B's embedding norms)
    init_norm: float              # output norm the projection starts near (B's median embedding norm)
    heads: int = 4
    mlp_ratio: int = 2
    compress_to: int | None = None   # K latent steps; None keeps one per plan token
    mlp_scale: float = 0.1        # initial weight of the MLP branch

    def __post_init__(self):
        if self.d_source % self.heads:
            raise AdapterConfigError(f"adapter heads={self.heads} must divide the sender width {self.d_source}")
        if self.compress_to is not None and self.compress_to < 1:
            raise AdapterConfigError(f"adapter compress_to must be >= 1 or None, got {self.compress_to}")
        if not (self.bound > 0 and math.isfinite(self.bound)):
            raise AdapterConfigError(f"adapter bound must be a positive finite norm, got {self.bound}")

    def to_dict(self) -> dict:
        return asdict(self)


def segment_bounds(length: int, segments: int) -> list[tuple[int, int]]:
    """[start, stop) of ``segments`` contiguous, disjoint pieces covering ``length`` positions."""
    return [(k * length // segments, (k + 1) * length // segments) for k in range(segments)]


def segment_count(length: int, compress_to: int | None) -> int:
    """How many latent steps a trajectory of ``length`` states becomes."""
    return length if compress_to is None else min(compress_to, length)


def pool_segments(states: torch.Tensor, segments: int) -> torch.Tensor:
    """(L, d) -> (segments, d): the mean of each contiguous segment."""
    return torch.stack([states[start:stop].mean(0) for start, stop in segment_bounds(len(states), segments)])


def clamp_norm(vectors: torch.Tensor, bound: float) -> torch.Tensor:
    """Scale down every vector whose norm exceeds ``bound``; others pass unchanged."""
    norms = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    return vectors * torch.clamp(bound / norms.clamp(min=1e-12), max=1.0)


class LatentAdapter(nn.Module):
    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        d = config.d_source
        self.norm = nn.LayerNorm(d)
        self.attention = nn.MultiheadAttention(d, config.heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, config.mlp_ratio * d), nn.GELU(), nn.Linear(config.mlp_ratio * d, d))
        self.mlp_scale = nn.Parameter(torch.tensor(float(config.mlp_scale)))
        self.projection = nn.Linear(d, config.d_target)
        # the normed stream has norm about sqrt(d): start the outputs near B's typical embedding norm
        nn.init.normal_(self.projection.weight, std=config.init_norm / math.sqrt(d * config.d_target))
        nn.init.zeros_(self.projection.bias)

    def forward(self, trajectory: torch.Tensor) -> torch.Tensor:
        """(L, d_source) -> (S, d_target), S = L, or min(K, L) when compressing."""
        if trajectory.dim() != 2 or trajectory.shape[-1] != self.config.d_source:
            raise AdapterConfigError(f"adapter expects one (L, {self.config.d_source}) trajectory, got "
                                     f"{tuple(trajectory.shape)}")
        if len(trajectory) == 0:
            raise AdapterConfigError("adapter got an empty trajectory: the sender wrote no plan tokens")
        x = self.norm(trajectory.float())[None]
        attended, _ = self.attention(x, x, x, need_weights=False)
        x = x + attended
        x = x + self.mlp_scale * self.mlp(self.mlp_norm(x))
        out = self.projection(x[0])
        segments = segment_count(len(out), self.config.compress_to)
        if segments != len(out):
            out = pool_segments(out, segments)
        return clamp_norm(out, self.config.bound)
