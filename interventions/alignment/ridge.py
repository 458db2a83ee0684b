"""Ridge regression between layers, with the strength picked on a validation slice.

The strength is relative to the mean feature variance (the mean diagonal of the design's scatter
matrix), so one grid serves layers whose norms differ by orders of magnitude. Solutions come from
the design's eigendecomposition, computed once per layer: every strength, and every target layer
of a survey, then costs a few matrix products instead of a new solve.
"""

from __future__ import annotations

import math

import torch

from .layers import Centred, Layer

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def pooled_r2(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """1 - SSE / SST, pooled over dimensions (SST around the truth's own mean)."""
    return float(1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum())


def _r2(weight, bias, x, y) -> float:
    """Pooled over dimensions: 1 - SSE / SST."""
    return pooled_r2(x @ weight + bias, y)


def _ridge_solve(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Centered ridge regression; ``ridge`` is relative to the mean feature variance."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    penalty = ridge * gram.diagonal().mean()
    weight = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0], dtype=x.dtype), xc.T @ yc)
    return weight, y_mean - x_mean @ weight


def _penalty(design: Centred, ridge: float) -> torch.Tensor:
    """``ridge`` × the mean feature variance: trace(XᵀX) / d, the mean diagonal of the scatter."""
    return ridge * design.spectrum[0].sum() / design.width


def ridge_weights(design: Centred, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """(XᵀX + p·I)⁻¹ cross for the centred design X (p as in ``_ridge_solve``), from the design's
    eigendecomposition. ``cross`` is XᵀY for the centred targets."""
    values, vectors = design.spectrum
    return vectors @ ((vectors.T @ cross) / (values + _penalty(design, ridge))[:, None])


def choose_ridge(design: Layer, target: Layer, validation_design: Layer | None = None) -> float:
    """The strength in ``RIDGE_GRID`` whose ridge fit from ``design`` to ``target`` on the fit rows
    predicts the validation rows best (R²). ``validation_design`` gives the validation inputs when
    they are not the design's own (a relative map decodes B's coordinates but is applied to A's)."""
    validation_design = validation_design or design
    x, y = design.centred("fit"), target.centred("fit")
    values, vectors = x.spectrum
    # in the design's eigenbasis every strength is a diagonal rescaling: no solve per strength
    coefficients = vectors.T @ (x.data.T @ y.data)
    val_inputs = (validation_design.rows("val") - x.mean) @ vectors
    y_val = target.rows("val")

    def score(ridge: float) -> float:
        predicted = (val_inputs / (values + _penalty(x, ridge))) @ coefficients + y.mean
        r2 = pooled_r2(predicted, y_val)
        return r2 if math.isfinite(r2) else -math.inf  # a constant validation slice decides nothing

    return max(RIDGE_GRID, key=score)


def ridge_validated(design: Layer, target: Layer, validation_design: Layer | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(weight, bias, strength): ridge from ``design`` to ``target`` states with the strength from
    ``choose_ridge``, refitted on all training rows."""
    ridge = choose_ridge(design, target, validation_design)
    x, y = design.centred("train"), target.centred("train")
    weight = ridge_weights(x, x.data.T @ y.data, ridge)
    return weight, y.mean - x.mean @ weight, ridge
