"""Combining a (mapped) source state into a target state, and the error for an unbridged width gap."""

from __future__ import annotations

import torch

from ..errors import WidthMismatchError


def width_mismatch(d_source: int, d_target: int, what: str = "source") -> WidthMismatchError:
    return WidthMismatchError(
        f"{what} width {d_source} differs from target width {d_target}. Fit a map with "
        "Align(kind='linear') (least squares over a sentence corpus; see fit_linear_map; also "
        "'procrustes', 'cca', 'relative'), or opt into AC's rule of combining only the trailing "
        "coordinates with Align(kind='trailing')."
    )


def graft(combine, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``combine(target, source)``, by AC's trailing rule when the widths differ (callers
    have already refused a mismatch the spec did not opt into)."""
    source = source.to(target.device, target.dtype)
    if source.shape[-1] != target.shape[-1]:
        return combine_trailing(combine, target, source)
    return combine(target, source)


def combine_trailing(combine, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """AC's rule for different widths: combine the trailing min(d_s, d_t) coordinates only."""
    width = min(target.shape[-1], source.shape[-1])
    out = target.clone()
    out[..., -width:] = combine(target[..., -width:], source[..., -width:])
    return out
