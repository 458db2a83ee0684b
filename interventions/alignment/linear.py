"""``linear``: ridge least squares from A's block-k to B's block-j last-token residuals over a
sentence corpus (as in Ramesh & Li, 2025), the strength picked on a validation slice (plain
least squares overfits when sentences are few relative to the width)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..models.loaded import LoadedModel
from .fitted import AffineMap, register_fitted_map
from .layers import Layer
from .maps import MAPS
from .ridge import ridge_validated


@dataclass(kw_only=True)
class LinearMap(AffineMap):
    kind: ClassVar[str] = "linear"
    ridge: float = 0.0        # chosen strength, relative to the mean feature variance

    def details(self) -> dict:
        return {"ridge": self.ridge, "shape": list(self.weight.shape)}


@register_fitted_map("linear", LinearMap, method=lambda align: "ridgecv")
def fit_linear(x: Layer, y: Layer, align) -> LinearMap:
    weight, bias, ridge = ridge_validated(x, y)
    return LinearMap(weight=weight, bias=bias, ridge=ridge)


def fit_linear_map(source: LoadedModel, source_layer, target: LoadedModel, target_layer,
                   n_sentences: int = 3000, seed: int = 0) -> LinearMap:
    """Least-squares map from source block ``source_layer`` to target block ``target_layer``
    (or to the target's input-embedding space with ``target_layer="embed"``, for soft tokens).

    The ridge strength is picked on a validation slice of the training sentences; R² and the mean
    cosine are then measured on held-out sentences the fit never saw. Cached by fingerprint.
    """
    from ..spec.base import Align  # spec kinds import this package

    return MAPS.get("linear")(source, source_layer, target, target_layer, Align("linear", n_sentences, seed))
