"""How alike two models' representations of the same n inputs are: X (n, d1) and Y (n, d2), any widths.

- ``ac_similarity``: AC's score ‖YᵀX‖²_F / (‖X‖²_F ‖Y‖²_F) (Ramesh & Li, 2025), uncentred. It is
  1 only when both sets are rank one along the same sample direction, and equals ⟨XXᵀ, YYᵀ⟩_F over
  the same product, so every layer pair comes from n x n Gram matrices computed once per layer.
- ``mutual_knn``: mutual k-nearest-neighbour alignment (Huh et al., 2024, "The Platonic
  Representation Hypothesis"; their code's ``mutual_knn``): for each sample, the fraction of its k
  nearest neighbours in X (cosine, itself excluded) that are also among its k nearest in Y, averaged.
  Features are first clamped at the 95th percentile of |value| and L2-normalised, as in their
  code; we take that percentile per layer (they take it over a model's stacked layers) because
  residual norms grow by orders of magnitude with depth. Two independent sets score about
  k / (n - 1); identical neighbour structure scores 1.
- ``cka``: linear CKA (``similarity.cka_matrix``): centred, invariant to rotation and scale.

``METRICS`` maps each name to its all-layer-pairs form (L1, n, d1), (L2, n, d2) -> (L1, L2).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InterventionError
from ..registry import Registry
from .similarity import cka_matrix

KNN_K = 10
CLAMP_QUANTILE = 0.95

METRICS: Registry[Callable] = Registry("similarity metric", InterventionError)


def _same_samples(x: torch.Tensor, y: torch.Tensor, axis: int) -> None:
    if x.shape[axis] != y.shape[axis]:
        raise InterventionError(f"these metrics compare the same inputs: got {x.shape[axis]} and "
                                f"{y.shape[axis]} samples")


# ------------------------------------------------------------------ AC's similarity score

def ac_similarity(x: torch.Tensor, y: torch.Tensor) -> float:
    """‖YᵀX‖²_F / (‖X‖²_F ‖Y‖²_F) for x (n, d1), y (n, d2)."""
    _same_samples(x, y, 0)
    x, y = x.double(), y.double()
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2
                 / (torch.linalg.matrix_norm(x) ** 2 * torch.linalg.matrix_norm(y) ** 2))


@METRICS.register("ac_similarity")
def ac_similarity_matrix(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(L1, n, d1), (L2, n, d2) -> (L1, L2) AC similarity of every layer pair, from n x n Grams."""
    _same_samples(xs, ys, 1)
    grams_x = torch.stack([x.double() @ x.double().T for x in xs]).flatten(1)
    grams_y = torch.stack([y.double() @ y.double().T for y in ys]).flatten(1)
    # ‖X‖²_F is the trace of XXᵀ: every (n + 1)-th entry of the flattened Gram
    traces_x = grams_x[:, ::xs.shape[1] + 1].sum(1)
    traces_y = grams_y[:, ::ys.shape[1] + 1].sum(1)
    return ((grams_x @ grams_y.T) / (traces_x[:, None] * traces_y[None])).float()


# ------------------------------------------------------------------ mutual k-NN

def prepare_features(x: torch.Tensor, quantile: float = CLAMP_QUANTILE) -> torch.Tensor:
    """Clamp at the ``quantile`` of |value| over the whole (n, d) set, then L2-normalise each row."""
    x = x.float()
    if quantile < 1:
        flat = x.abs().flatten()
        limit = flat.kthvalue(int(quantile * flat.numel()) + 1).values  # the exact q-th order statistic
        x = x.clamp(-limit, limit)
    return F.normalize(x, dim=-1)


def nearest_neighbours(x: torch.Tensor, k: int = KNN_K, quantile: float = CLAMP_QUANTILE) -> torch.Tensor:
    """(n, k) indices of each sample's k nearest other samples by cosine, nearest first."""
    n = x.shape[0]
    if not 1 <= k < n:
        raise InterventionError(f"mutual k-NN needs 1 <= k < n samples; got k={k}, n={n}")
    features = prepare_features(x, quantile)
    similarity = features @ features.T
    similarity.fill_diagonal_(-torch.inf)  # a sample is not its own neighbour
    return similarity.topk(k, dim=1).indices


def neighbour_overlap(knn_x: torch.Tensor, knn_y: torch.Tensor) -> torch.Tensor:
    """Mean fraction of shared neighbours: (..., n, k) index sets -> (...) scores, broadcasting."""
    shared = (knn_x.unsqueeze(-1) == knn_y.unsqueeze(-2)).any(-1)
    return shared.double().mean((-2, -1))


def mutual_knn(x: torch.Tensor, y: torch.Tensor, k: int = KNN_K, quantile: float = CLAMP_QUANTILE) -> float:
    """Mutual k-NN alignment of x (n, d1) and y (n, d2)."""
    _same_samples(x, y, 0)
    return float(neighbour_overlap(nearest_neighbours(x, k, quantile), nearest_neighbours(y, k, quantile)))


@METRICS.register("mutual_knn")
def mutual_knn_matrix(xs: torch.Tensor, ys: torch.Tensor, k: int = KNN_K,
                      quantile: float = CLAMP_QUANTILE) -> torch.Tensor:
    """(L1, n, d1), (L2, n, d2) -> (L1, L2); each layer's neighbour sets are computed once."""
    _same_samples(xs, ys, 1)
    knn_y = torch.stack([nearest_neighbours(y, k, quantile) for y in ys])          # (L2, n, k)
    return torch.stack([neighbour_overlap(nearest_neighbours(x, k, quantile), knn_y) for x in xs]).float()


METRICS.register("cka", cka_matrix)
