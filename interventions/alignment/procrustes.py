"""``procrustes``: a rotation (and one scale) between A's and B's centred states.

Both sides are centred on their training means, reduced to a common number of principal
directions (PCA on the training sentences: all of them when the widths match and the data spans
them, else min(widths, ranks) or ``Align.components``), rotated onto each other by orthogonal
Procrustes (R = UVᵀ from the SVD of XᵀY), and mapped back into B's space through B's principal
directions; B's mean is added back. One isotropic scale s = trace(Σ) / ‖X‖²_F (least squares)
matches the norms, since two models' residual norms can differ by orders of magnitude; it keeps
angles and relative distances. With equal widths and full rank this is the plain orthogonal
Procrustes map, and it recovers a planted rotation exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .fitted import AffineMap, register_fitted_map
from .layers import Layer, component_count


@dataclass(kw_only=True)
class ProcrustesMap(AffineMap):
    kind: ClassVar[str] = "procrustes"
    components: int           # principal directions rotated onto each other
    scale: float              # isotropic scale applied with the rotation

    def details(self) -> dict:
        return {"components": self.components, "scale": round(self.scale, 6), "shape": list(self.weight.shape)}


def orthogonal_procrustes(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(R, s) minimising ‖s·xR - y‖_F over orthogonal R and a scalar s, for centred x, y (n, c)."""
    u, singular, vh = torch.linalg.svd(x.T @ y)
    return u @ vh, float(singular.sum() / (x ** 2).sum())


@register_fitted_map("procrustes", ProcrustesMap,
                     method=lambda align: f"procrustes-c{align.components or 'auto'}")
def fit_procrustes(x: Layer, y: Layer, align) -> ProcrustesMap:
    source, target = x.centred("train"), y.centred("train")
    components = component_count("procrustes", align.components, source, target)
    rotation, scale = orthogonal_procrustes(source.projected(components), target.projected(components))
    weight = scale * source.basis(components) @ rotation @ target.basis(components).T
    return ProcrustesMap(weight=weight, bias=target.mean - source.mean @ weight, components=components,
                         scale=scale)
