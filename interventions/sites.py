"""Resolve declarative sites against a model and a padded batch, and edit activations there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import NonFiniteStateError, PositionOutOfRangeError
from .models.families import STREAM_ORDER
from .models.loaded import LoadedModel


@dataclass(frozen=True, eq=False)
class ResolvedSite:
    block: int
    stream: str
    positions: torch.Tensor | None   # (batch, n_pos) indices into the padded sequence; None = all

    @property
    def order(self) -> tuple[int, int]:
        """Forward order, which nnsight requires when reading modules."""
        return self.block, STREAM_ORDER[self.stream]


@dataclass(frozen=True, eq=False)
class Edit:
    """Replace the activation at ``site`` with ``fn(activation)``; shapes (batch, n_pos, d)."""

    site: ResolvedSite
    fn: Callable[[torch.Tensor], torch.Tensor]
    every_step: bool = False   # also edit the newest token at each generation step


def resolve_positions(position, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Per-row indices into a left-padded batch. Negative positions count from the end."""
    if position == "all":
        return None
    wanted = [position] if isinstance(position, int) else list(position)
    lengths = attention_mask.sum(dim=1)          # real tokens per row
    total = attention_mask.shape[1]
    shortest = int(lengths.min())
    rows = []
    for p in wanted:
        if not -shortest <= p < shortest:
            raise PositionOutOfRangeError(
                f"position {p} is outside the prompt: the shortest prompt in the batch has {shortest} "
                f"tokens, so valid positions are 0..{shortest - 1} or -{shortest}..-1"
            )
        rows.append(total + p if p < 0 else (total - lengths) + p)
    if all(isinstance(r, int) for r in rows):
        return torch.tensor(rows).expand(attention_mask.shape[0], -1)
    return torch.stack([torch.as_tensor(r).expand(attention_mask.shape[0]) for r in rows], dim=1)


def resolve_site(site, model: LoadedModel, attention_mask: torch.Tensor) -> ResolvedSite:
    return ResolvedSite(model.resolve_layer(site.layer), site.stream,
                        resolve_positions(site.position, attention_mask))


def gather(acts: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """(batch, seq, d) -> (batch, n_pos, d)."""
    if positions is None:
        return acts
    rows = torch.arange(acts.shape[0], device=acts.device)[:, None]
    return acts[rows, positions.to(acts.device)]


def apply_edit(acts: torch.Tensor, positions: torch.Tensor | None, fn) -> torch.Tensor:
    """A copy of ``acts`` with ``fn`` applied at ``positions``."""
    if positions is None:
        return fn(acts)
    out = acts.clone()
    rows = torch.arange(acts.shape[0], device=acts.device)[:, None]
    idx = positions.to(acts.device)
    out[rows, idx] = fn(acts[rows, idx]).to(acts.dtype)
    return out


def padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, counted from each row's first real token (as generate does)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def decode_positions(batch: int) -> torch.Tensor:
    """During decoding the sequence is the new token only."""
    return torch.zeros(batch, 1, dtype=torch.long)


def describe_site(site, model: LoadedModel) -> str:
    """A site in words, for errors: model role (name), block, stream."""
    return f"model role {site.model!r} ({model.name}), block {model.resolve_layer(site.layer)}, {site.stream}"


def require_finite(acts: torch.Tensor, what: str) -> torch.Tensor:
    """``acts`` unchanged, or ``NonFiniteStateError`` saying ``what`` (and where) holds NaN or inf."""
    if not acts.is_meta and not bool(torch.isfinite(acts).all()):   # meta tensors (dry runs) hold no values
        raise NonFiniteStateError(f"NaN or inf in {what}. Check that site's model in float32 (half precision "
                                  "overflows), the message's map, and the combine's parameters.")
    return acts
