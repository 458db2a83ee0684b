"""Redundancy-aware merges: inject the part of A's state that B does not already encode.

They are combines with parameters, registered beside sum/mean/replace, so any ``Splice`` uses
them by name, with ``combine_args``. Below, b is B's state at the target site, a is A's state
mapped into B's space, and mu is B's corpus mean at that block:

| merge                 | result                                                                 |
|-----------------------|------------------------------------------------------------------------|
| `orthogonal`          | b + λ (a − (a·b̂) b̂): the part of a orthogonal to b, per row and position |
| `orthogonal_subspace` | b + λ (a − U Uᵀ a), U: B's top-``rank`` principal directions there     |
| `residual`            | b + λ (a − â(b)), â: A's state predicted linearly from B's (corpus fit) |
| `ties`                | mu + λ TIES(a − mu, b − mu), see ``ties``                               |
| `scaled_add`          | b + λ (a − mu) (task arithmetic)                                       |

Each takes ``scale`` (λ, default 1) and ``norm`` (rescale the result to B's median natural norm
at that block). Statistics (``interventions.statistics``) come from the corpus the splice's
``align`` names (``n_sentences``, ``seed``), fitted once per fingerprint and cached; they describe
the last-token residual stream after a block (``resid_post``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .combine import Merge, register_combine
from .errors import CarrierMissingError, StatisticsError, WidthMismatchError
from .models.loaded import LoadedModel
from .sites import describe_site
from .statistics import LayerStats, Regression, layer_stats, source_regression

# ---------------------------------------------------------------------------- the operations


def reject(vectors: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The part of each vector orthogonal to its direction (..., d); a zero direction removes nothing."""
    length2 = (directions * directions).sum(-1, keepdim=True)
    along = (vectors * directions).sum(-1, keepdim=True) / length2.where(length2 > 0, torch.ones_like(length2))
    return vectors - along * directions


def remove_subspace(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``vectors`` (..., d) less their projection onto the span of the orthonormal columns of ``basis`` (d, r)."""
    return vectors - (vectors @ basis) @ basis.T


def trim(deltas: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep each vector's top ``top_p``% coordinates by magnitude (at least one), zero the rest."""
    keep = max(1, math.ceil(round(top_p * deltas.shape[-1] / 100, 9)))
    index = deltas.abs().topk(keep, dim=-1).indices
    return torch.zeros_like(deltas).scatter(-1, index, deltas.gather(-1, index))


def ties(deltas: list[torch.Tensor], top_p: float) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023) of deltas from one reference: trim each to its top ``top_p``%
    coordinates by magnitude, elect a sign per coordinate (that of the trimmed sum), and average the
    trimmed deltas that agree with it (a coordinate no delta keeps with that sign stays 0)."""
    trimmed = torch.stack([trim(d, top_p) for d in deltas])
    elected = trimmed.sum(0).sign()
    agree = (trimmed.sign() == elected) & (trimmed != 0)
    return (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)


def to_norm(vectors: torch.Tensor, norm: float) -> torch.Tensor:
    """Each vector rescaled to L2 norm ``norm`` (a zero vector stays zero)."""
    length = vectors.norm(dim=-1, keepdim=True)
    return vectors * (norm / length.where(length > 0, torch.ones_like(length)))


# ---------------------------------------------------------------------------- where a merge acts


@dataclass
class MergeContext:
    """Where a merge acts: target and source sites and models, the map between them, and the
    corpus (an ``Align``'s ``n_sentences``, ``seed``) its statistics come from."""

    target: LoadedModel
    target_site: Any          # spec Site
    source: LoadedModel
    source_site: Any
    mapping: Any              # the align map: callable on (..., d_source), with describe()
    n_sentences: int = 3000
    seed: int = 0

    @classmethod
    def of(cls, splice, program) -> "MergeContext":
        session = program.session
        source = session.model(splice.source.model)
        mapping = session.alignment(splice.align, source, splice.source.layer, program.model, splice.target.layer)
        return cls(program.model, splice.target, source, splice.source, mapping,
                   splice.align.n_sentences, splice.align.seed)

    def target_stats(self, merge: Merge) -> LayerStats:
        """B's statistics at the target block."""
        self._on_corpus_stream(merge, self.target_site, self.target)
        return self._fitted(merge, lambda: layer_stats(self.target, self.target_site.layer, self.n_sentences,
                                                       self.seed),
                            f"interventions.statistics.layer_stats(B, {self._block(self.target_site, self.target)}, "
                            f"n_sentences={self.n_sentences}, seed={self.seed})")

    def regression(self, merge: Merge) -> Regression:
        """A's mapped state predicted from B's, at this layer pair."""
        self._on_corpus_stream(merge, self.target_site, self.target)
        self._on_corpus_stream(merge, self.source_site, self.source)
        k, j = self._block(self.source_site, self.source), self._block(self.target_site, self.target)
        return self._fitted(merge, lambda: source_regression(self.source, k, self.target, j, self.mapping,
                                                             self.n_sentences, self.seed),
                            f"interventions.statistics.source_regression(A, {k}, B, {j}, mapping, "
                            f"n_sentences={self.n_sentences}, seed={self.seed})")

    @staticmethod
    def _block(site, model: LoadedModel) -> int:
        return model.resolve_layer(site.layer)

    @staticmethod
    def _on_corpus_stream(merge: Merge, site, model: LoadedModel) -> None:
        if site.stream != "resid_post":
            raise StatisticsError(f"merge {merge.name!r} uses corpus statistics of the residual stream after a "
                                  f"block (resid_post), but the splice acts at {describe_site(site, model)}; "
                                  "splice at resid_post, or use 'orthogonal' without norm, which needs none")

    def _fitted(self, merge: Merge, fit, how: str):
        try:
            return fit()
        except (StatisticsError, CarrierMissingError, ValueError) as error:
            raise StatisticsError(f"merge {merge.name!r} needs corpus statistics that could not be fit: {error}. "
                                  f"Fit them once with {how} (the corpus the splice's align names; cached on "
                                  "disk afterwards)") from None


def _same_width(vectors: torch.Tensor, width: int, merge: Merge) -> None:
    if vectors.shape[-1] != width:
        raise WidthMismatchError(f"merge {merge.name!r} works in B's full {width}-wide space but got "
                                 f"{vectors.shape[-1]}-wide states (AC's trailing rule); bridge different widths "
                                 "with align: linear")


# ---------------------------------------------------------------------------- the merges


@dataclass(frozen=True)
class ScaledMerge(Merge):
    """Base of the redundancy-aware merges: ``scale`` (λ) and ``norm`` control, statistics fetched once
    per splice by ``prepare`` and passed to ``merge``."""

    scale: float = 1.0
    norm: bool = False

    def bind(self, context: MergeContext):
        prepared = self.prepare(context)
        target_norm = context.target_stats(self).median_norm if self.norm else None

        def combine(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            merged = self.merge(target, source, prepared)
            return merged if target_norm is None else to_norm(merged, target_norm)

        return combine

    def prepare(self, context: MergeContext) -> Any:
        """The statistics ``merge`` needs (None for none)."""
        return None

    def merge(self, target: torch.Tensor, source: torch.Tensor, prepared) -> torch.Tensor:
        raise NotImplementedError


@register_combine("orthogonal")
@dataclass(frozen=True)
class Orthogonal(ScaledMerge):
    """Add the part of A's vector orthogonal to B's own vector (per row and position), × scale."""

    def merge(self, target, source, prepared):
        return target + self.scale * reject(source, target)


@register_combine("orthogonal_subspace")
@dataclass(frozen=True)
class OrthogonalSubspace(ScaledMerge):
    """Add A's vector less its projection onto B's top-``rank`` principal subspace at that block, × scale."""

    rank: int = 8

    def check(self):
        if self.rank < 1:
            raise self.refuse(f"rank must be at least 1, got {self.rank}")

    def prepare(self, context):
        return context.target_stats(self).basis(self.rank)

    def merge(self, target, source, basis):
        _same_width(source, basis.shape[0], self)
        return target + self.scale * remove_subspace(source, basis.to(source))


@register_combine("residual")
@dataclass(frozen=True)
class Residual(ScaledMerge):
    """Add what of A's vector B's state does not linearly predict (a corpus regression), × scale."""

    def prepare(self, context):
        return context.regression(self)

    def merge(self, target, source, regression: Regression):
        _same_width(target, regression.weight.shape[0], self)
        _same_width(source, regression.weight.shape[1], self)
        return target + self.scale * (source - regression.predict(target).to(source))


@register_combine("ties")
@dataclass(frozen=True)
class Ties(ScaledMerge):
    """TIES-merging of A's and B's deltas from B's corpus mean: mean + scale × merged delta."""

    top_p: float = 20.0

    def check(self):
        if not 0 < self.top_p <= 100:
            raise self.refuse(f"top_p is a percentage of coordinates in (0, 100], got {self.top_p}")

    def prepare(self, context):
        return context.target_stats(self).mean

    def merge(self, target, source, mean):
        _same_width(target, mean.shape[0], self)
        reference = mean.to(target)
        return reference + self.scale * ties([source - reference, target - reference], self.top_p)


@register_combine("scaled_add")
@dataclass(frozen=True)
class ScaledAdd(ScaledMerge):
    """Task arithmetic: B + scale × (A − B's corpus mean)."""

    def prepare(self, context):
        return context.target_stats(self).mean

    def merge(self, target, source, mean):
        _same_width(target, mean.shape[0], self)
        return target + self.scale * (source - mean.to(source))
