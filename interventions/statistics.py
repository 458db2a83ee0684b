"""Corpus statistics of a model's residual stream at one block, shared by merges and diagnostics.

From the last-token corpus activations (``alignment.corpus_activations``, cached per model and
corpus) two kinds of statistics are fitted once per fingerprint (weights, block, corpus), kept
on disk under the cache root and in memory:

- ``LayerStats``: mean, Ledoit–Wolf shrinkage covariance (float64) with its Cholesky factor for
  Mahalanobis distances, principal directions, the norms of natural states, and the Mahalanobis
  distances of held-out states (the sentences the fit never saw; the same ones the linear map
  holds out), so a merged state's distance and norm read as percentiles of natural ones;
- ``Regression``: A's state, mapped into B's space, predicted linearly from B's state at a layer
  pair: the part of A that B already encodes. The ridge strength is picked on a validation slice.

Nothing here returns NaN: non-finite states, too few sentences for the width, or a request past
the data's rank raise ``StatisticsError`` with what to change.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields, replace

import torch

from . import corpus
from .alignment import _ridge_solve, corpus_activations
from .errors import StatisticsError
from .models.cache import cache_root
from .verified import load_tensors, save_tensors
from .models.loaded import LoadedModel

HELD_OUT_FRACTION = 0.1
RIDGE_GRID = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)   # relative; the small end makes an exact relation exact
_memo: dict[str, object] = {}   # fingerprint -> fitted statistics, shared by every merge in this process


def percentile_of(sorted_values: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Percent of ``sorted_values`` at or below each of ``values`` (0..100)."""
    ranks = torch.searchsorted(sorted_values, values.to(sorted_values.dtype).contiguous(), right=True)
    return ranks.double() * 100 / len(sorted_values)


def heldout_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) indices: the split ``fit_linear_map`` uses, so both hold out the same sentences."""
    n_heldout = max(1, int(n * HELD_OUT_FRACTION))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_heldout:], perm[:n_heldout]


def _require_finite(states: torch.Tensor, what: str) -> None:
    if not torch.isfinite(states).all():
        raise StatisticsError(f"{what}: the corpus states hold NaN or inf; check the model's forward pass in "
                              "float32 before fitting statistics on it")


def _require_samples(width: int, n_train: int, what: str) -> None:
    if n_train <= width:
        needed = math.ceil((width + 1) / (1 - HELD_OUT_FRACTION)) + 1
        raise StatisticsError(f"{what}: {width}-wide states need more training sentences than dimensions, got "
                              f"{n_train}; fit on at least {needed} sentences (Align(n_sentences={needed}))")


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit–Wolf (2004) shrinkage of the sample covariance of rows ``x`` toward a scaled identity:
    ``(1 - s) S + s tr(S)/d I`` with the estimated optimal ``s`` in [0, 1]. Float64 in, float64 out."""
    n, d = x.shape
    centred = x - x.mean(0)
    sample = centred.T @ centred / n
    level = sample.diagonal().mean()
    gap = ((sample - level * torch.eye(d, dtype=x.dtype)) ** 2).sum()
    # (1/n^2) sum_k ||x_k x_k^T - S||_F^2, without forming the n outer products
    spread = (centred.pow(2).sum(1) ** 2).sum() / n ** 2 - (sample ** 2).sum() / n
    shrinkage = float((spread.clamp(min=0) / gap).clamp(max=1)) if gap > 0 else 0.0
    return (1 - shrinkage) * sample + shrinkage * level * torch.eye(d, dtype=x.dtype), shrinkage


def _host(states: torch.Tensor) -> torch.Tensor:
    """States as float64 on the CPU, where statistics live."""
    return states.detach().to("cpu", torch.float64)


@dataclass(frozen=True)
class LayerStats:
    """Statistics of natural last-token states of one model at one block (float64 tensors)."""

    fingerprint: str
    mean: torch.Tensor               # (d,)
    covariance: torch.Tensor         # (d, d) Ledoit–Wolf shrinkage estimate
    shrinkage: float
    cholesky: torch.Tensor           # (d, d) lower factor of the covariance
    components: torch.Tensor         # (d, rank) principal directions, most variance first
    variances: torch.Tensor          # (rank,) sample variance along each direction
    norms: torch.Tensor              # (n,) sorted L2 norms of every corpus state
    heldout_distances: torch.Tensor  # (n_heldout,) sorted Mahalanobis distances of held-out states
    n_train: int
    n_heldout: int

    @property
    def width(self) -> int:
        return self.mean.shape[0]

    @property
    def rank(self) -> int:
        """Numerical rank of the sample covariance: how many principal directions are real."""
        return self.components.shape[1]

    @property
    def median_norm(self) -> float:
        """B's typical state norm at this block (the target of a merge's norm control)."""
        return float(self.norms.quantile(0.5))

    def basis(self, rank: int) -> torch.Tensor:
        """(d, rank) orthonormal top-``rank`` principal subspace."""
        if rank > self.rank:
            raise StatisticsError(f"a rank-{rank} principal subspace was asked for, but the {self.n_train} corpus "
                                  f"states at {self.fingerprint} span only {self.rank} directions; use rank <= "
                                  f"{self.rank}, or fit on more varied sentences")
        return self.components[:, :rank]

    def mahalanobis(self, states: torch.Tensor) -> torch.Tensor:
        """(...,) distance of (..., d) states from the mean under the shrinkage covariance."""
        centred = (_host(states) - self.mean).reshape(-1, self.width)
        whitened = torch.linalg.solve_triangular(self.cholesky, centred.T, upper=False)
        return whitened.norm(dim=0).reshape(states.shape[:-1])

    def norm_percentile(self, states: torch.Tensor) -> torch.Tensor:
        """Percent of natural states whose norm is at most each state's norm."""
        return percentile_of(self.norms, _host(states).norm(dim=-1))

    def distance_percentile(self, states: torch.Tensor) -> torch.Tensor:
        """Percent of natural held-out states at most as far (Mahalanobis) from the mean."""
        return percentile_of(self.heldout_distances, self.mahalanobis(states))


def fit_layer_stats(states: torch.Tensor, seed: int = 0, fingerprint: str = "") -> LayerStats:
    """``LayerStats`` of (n, d) states: fitted on the training split, distances of the held-out one."""
    train, heldout = heldout_split(states.shape[0], seed)
    what = f"statistics {fingerprint}".strip()
    _require_finite(states, what)
    _require_samples(states.shape[-1], len(train), what)
    x = states[train].double()
    covariance, shrinkage = ledoit_wolf(x)
    cholesky, info = torch.linalg.cholesky_ex(covariance)
    if int(info) != 0:   # only when every training state is the same vector
        raise StatisticsError(f"{what}: the corpus states do not vary (covariance of rank 0); they cannot "
                              "define a distance")
    centred = x - x.mean(0)
    variances, vectors = torch.linalg.eigh(centred.T @ centred / len(x))
    variances, vectors = variances.flip(0), vectors.flip(1)
    tolerance = float(variances[0]) * max(x.shape) * torch.finfo(torch.float64).eps
    rank = int((variances > tolerance).sum())
    stats = LayerStats(fingerprint, x.mean(0), covariance, shrinkage, cholesky, vectors[:, :rank].contiguous(),
                       variances[:rank].contiguous(), states.double().norm(dim=-1).sort().values,
                       torch.empty(0, dtype=torch.float64), len(train), len(heldout))
    return replace(stats, heldout_distances=stats.mahalanobis(states[heldout]).sort().values)


@dataclass(frozen=True)
class Regression:
    """A's state (in B's space) predicted linearly from B's: ``prediction = b @ weight + bias``."""

    fingerprint: str
    weight: torch.Tensor      # (d_B, d_A) float64
    bias: torch.Tensor        # (d_A,)
    ridge: float              # picked on a validation slice; relative to the mean feature variance
    r2_heldout: float         # share of A's variance B predicts on held-out sentences
    n_train: int
    n_heldout: int

    def predict(self, states: torch.Tensor) -> torch.Tensor:
        """Float64, on the states' device."""
        return states.double() @ self.weight.to(states.device) + self.bias.to(states.device)


def r_squared(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Pooled over dimensions: 1 - SSE / SST."""
    return float(1 - ((x @ weight + bias - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def fit_regression(inputs: torch.Tensor, outputs: torch.Tensor, seed: int = 0, fingerprint: str = "",
                   ridges: tuple[float, ...] = RIDGE_GRID) -> Regression:
    """Ridge regression of (n, d_out) ``outputs`` on (n, d_in) ``inputs`` over the training split;
    the strength is the one of ``ridges`` that predicts a validation slice best."""
    train, heldout = heldout_split(inputs.shape[0], seed)
    what = f"regression {fingerprint}".strip()
    _require_finite(inputs, what)
    _require_finite(outputs, what)
    _require_samples(inputs.shape[-1], len(train), what)
    x, y = inputs.double(), outputs.double()
    n_val = max(1, len(train) // 10)
    fit, val = train[n_val:], train[:n_val]
    ridge = max(ridges, key=lambda r: r_squared(*_ridge_solve(x[fit], y[fit], r), x[val], y[val]))
    weight, bias = _ridge_solve(x[train], y[train], ridge)
    return Regression(fingerprint, weight, bias, ridge, r_squared(weight, bias, x[heldout], y[heldout]),
                      len(train), len(heldout))


def _fields(stats) -> dict:
    """A statistics object as a plain dict of tensors and numbers (what ``torch.save`` stores)."""
    return {f.name: getattr(stats, f.name) for f in fields(stats)}


def _cached(kind: str, fingerprint: str, cls, fit):
    """The statistics ``fingerprint`` names: from memory, else from disk, else fitted and saved."""
    if fingerprint in _memo:
        return _memo[fingerprint]
    path = cache_root() / "statistics" / f"{kind}-{fingerprint}.pt"
    saved = load_tensors(path, "cached statistics")
    if saved is not None:
        fitted = cls(**saved)
    else:
        fitted = fit()
        save_tensors(_fields(fitted), path)
    _memo[fingerprint] = fitted
    return fitted


def layer_stats(model: LoadedModel, layer, n_sentences: int = 3000, seed: int = 0) -> LayerStats:
    """``LayerStats`` of ``model``'s last-token residual after block ``layer`` over the corpus."""
    block = model.resolve_layer(layer)
    texts = corpus.sentences(n_sentences, seed)
    fingerprint = f"{model.tag}-L{block}-{corpus.fingerprint(texts)}-s{seed}"
    return _cached("layer", fingerprint, LayerStats,
                   lambda: fit_layer_stats(corpus_activations(model, texts)[:, block], seed, fingerprint))


def map_tag(mapping) -> str:
    """A short hash of what a map says of itself (kind, fit fingerprint): part of a regression's key."""
    return hashlib.sha256(json.dumps(mapping.describe(), sort_keys=True).encode()).hexdigest()[:12]


def source_regression(source: LoadedModel, source_layer, target: LoadedModel, target_layer, mapping,
                      n_sentences: int = 3000, seed: int = 0) -> Regression:
    """``Regression`` of ``mapping(A's state at source_layer)`` on B's state at ``target_layer``."""
    k, j = source.resolve_layer(source_layer), target.resolve_layer(target_layer)
    texts = corpus.sentences(n_sentences, seed)
    fingerprint = (f"{source.tag}-L{k}-via-{map_tag(mapping)}-from-{target.tag}-L{j}"
                   f"-{corpus.fingerprint(texts)}-s{seed}")

    def fit() -> Regression:
        sent = mapping(corpus_activations(source, texts)[:, k])
        return fit_regression(corpus_activations(target, texts)[:, j], sent, seed, fingerprint)

    return _cached("regression", fingerprint, Regression, fit)
