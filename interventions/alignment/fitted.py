"""Maps fitted on corpus states: the shared record (fingerprint, held-out fit), the held-out
judgement, and the pipeline every fitted kind runs through (corpus states, split, fit, judge,
cache on disk by fingerprint).

A fitted kind is registered with ``@register_fitted_map(name, MapClass, method)`` on a function
``fit(x: Layer, y: Layer, align) -> map``: it reads the training rows of ``x`` (source states)
and ``y`` (target states) and never the held-out ones. The same function serves a splice's map
(via ``MAPS``) and the all-layer-pairs survey of ``interventions align``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from .. import corpus
from ..models.cache import cache_root
from ..models.loaded import LoadedModel
from ..registry import _origin
from ..verified import load_tensors, save_tensors
from .errors import DegenerateFitError
from .layers import Layer, Split
from .maps import MAPS
from .states import paired_states


@dataclass(kw_only=True)
class FittedMap:
    """What every fitted map records: its cache fingerprint and how well it predicts the target's
    states of held-out sentences (R² pooled over dimensions, and the mean cosine)."""

    kind: ClassVar[str] = ""
    fingerprint: str = ""
    n_train: int = 0
    n_heldout: int = 0
    r2_heldout: float = 0.0       # 1 - SSE/SST on held-out sentences, pooled over dimensions
    cosine_heldout: float = 0.0   # mean cosine between mapped and true held-out states

    def details(self) -> dict:
        """Kind-specific facts for ``describe()`` (strength chosen, components, ...)."""
        return {}

    def describe(self) -> dict:
        return {"kind": self.kind, "fingerprint": self.fingerprint, "r2_heldout": round(self.r2_heldout, 4),
                "cosine_heldout": round(self.cosine_heldout, 4), "n_train": self.n_train,
                "n_heldout": self.n_heldout, **self.details()}

    def state(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def as_float32(self) -> "FittedMap":
        """The map with its tensors in float32 (fitted in float64; applied to float32 streams)."""
        return dataclasses.replace(self, **{name: value.float() for name, value in self.state().items()
                                            if isinstance(value, torch.Tensor)})


@dataclass(kw_only=True)
class AffineMap(FittedMap):
    """x -> x @ weight + bias: linear, Procrustes and CCA maps are all affine once fitted."""

    weight: torch.Tensor      # (d_source, d_target)
    bias: torch.Tensor        # (d_target,)

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return acts.to(self.weight.dtype) @ self.weight + self.bias

    def details(self) -> dict:
        return {"shape": list(self.weight.shape)}


def heldout_fit(mapping, x: torch.Tensor, y: torch.Tensor, what: str) -> tuple[float, float]:
    """(R² pooled over dimensions, mean cosine) of ``mapping(x)`` against ``y``."""
    y = y.double()
    predicted = mapping(x).double()
    total = ((y - y.mean(0)) ** 2).sum()
    if total == 0:
        raise DegenerateFitError(f"{what}: the target states of the held-out sentences are all equal, so R² "
                                 "is undefined. Fit on more sentences or pick another layer.")
    r2 = float(1 - ((predicted - y) ** 2).sum() / total)
    cosine = float(F.cosine_similarity(predicted, y, dim=-1).mean())
    if not (math.isfinite(r2) and math.isfinite(cosine)):
        raise DegenerateFitError(f"{what}: the fitted map gives non-finite predictions on held-out sentences; "
                                 "the states are too ill-conditioned for this kind. Try kind 'linear'.")
    return r2, cosine


@dataclass(frozen=True)
class FittedKind:
    """A registered map kind fitted on corpus states. Called like any map kind it returns the map
    for a model pair (cached); ``fit_and_judge`` fits two prepared layers and judges the result."""

    name: str
    map_class: type
    fit: Callable          # (x: Layer, y: Layer, align) -> map, from training rows only
    method: Callable       # align -> the fingerprint's method tag (what of the align the fit depends on)

    def __call__(self, source: LoadedModel, source_layer, target: LoadedModel, target_layer, align):
        return fit_on_corpus(self, source, source_layer, target, target_layer, align)

    def fit_and_judge(self, x: Layer, y: Layer, align) -> FittedMap:
        x.centred("train").require_variance()
        y.centred("train").require_variance()
        fitted = self.fit(x, y, align)
        r2, cosine = heldout_fit(fitted, x.rows("heldout"), y.rows("heldout"),
                                 f"{self.name} map from {x.what} to {y.what}")
        return dataclasses.replace(fitted, r2_heldout=r2, cosine_heldout=cosine,
                                   n_train=len(x.split.train), n_heldout=len(x.split.heldout))


def register_fitted_map(name: str, map_class: type, method: Callable | None = None):
    """Register ``fit(x: Layer, y: Layer, align) -> map_class`` as the map kind ``name``."""
    def add(fit: Callable) -> Callable:
        MAPS.register(name, FittedKind(name, map_class, fit, method or (lambda align: name)),
                      origin=_origin(fit, 2))
        return fit
    return add


def fit_on_corpus(kind: FittedKind, source: LoadedModel, source_layer, target: LoadedModel, target_layer,
                  align) -> FittedMap:
    """The ``kind`` map from source block ``source_layer`` to target block ``target_layer`` (or the
    target's input embeddings, ``"embed"``), fitted on ``align.n_sentences`` corpus sentences and
    cached on disk by fingerprint (weights, layers, corpus, method)."""
    k = source.resolve_layer(source_layer)
    j = "embed" if target_layer == "embed" else target.resolve_layer(target_layer)
    texts = corpus.sentences(align.n_sentences, align.seed)
    fingerprint = (f"{source.tag}-L{k}-to-{target.tag}-{'E' if j == 'embed' else f'L{j}'}"
                   f"-{corpus.fingerprint(texts)}-{kind.method(align)}")

    def layers(split):
        x, y = paired_states(source, k, target, j, texts)
        return (Layer(x, split, f"{source.name} block {k}"),
                Layer(y, split, f"{target.name} {'input embeddings' if j == 'embed' else f'block {j}'}"))

    return cached_fit(kind, fingerprint, len(texts), layers, align)


def cached_fit(kind: FittedKind, fingerprint: str, n: int, layers, align) -> FittedMap:
    """The map cached under ``fingerprint``, or fitted on ``layers(split)`` (the (x, y) Layers of
    ``n`` sentences split by ``align.seed``), judged on the held-out part and saved with its description."""
    path = cache_root() / "maps" / f"{fingerprint}.pt"
    saved = load_tensors(path, "cached map")
    if saved is not None:
        return kind.map_class(**saved)
    x, y = layers(Split.of(n, align.seed))
    fitted = dataclasses.replace(kind.fit_and_judge(x, y, align).as_float32(), fingerprint=fingerprint)
    save_tensors(fitted.state(), path)
    path.with_suffix(".json").write_text(json.dumps(fitted.describe(), indent=2))
    return fitted
