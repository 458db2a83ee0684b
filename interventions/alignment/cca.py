"""``cca``: regularised canonical correlation analysis between A's and B's states.

Canonical directions a_i (A) and b_i (B) maximise the correlation ρ_i of the variates u_i = Xa_i
and v_i = Yb_i over the training sentences (centred). Each side's scatter S gets p·I added before
whitening (p = strength × mean feature variance), so the directions stay finite on rank-deficient
layers. The map goes A → canonical space → B's space:

1. A's state, centred, gives variates u = (x - μ_A) a;
2. B's variates are predicted as ρ ⊙ u (canonical pairs are uncorrelated with each other, so this
   is their least-squares prediction from u);
3. B's state is decoded from its variates by least squares fitted on the training sentences
   (Y_c ≈ (Y_c b) D, i.e. D = (bᵀS_Y b)⁺ bᵀS_Y), and B's mean is added back.

``Align.components`` keeps the top canonical pairs; by default all min(widths, ranks) of them.
With all pairs and B no wider than A, the map is exactly ridge regression with strength p (the
whitening of B cancels: a·diag(ρ)·b⁻¹ = (S_X + pI)⁻¹ XᵀY), so the strength is the one the ridge
fit picks on the validation slice (``choose_ridge``): one SVD per fit, no magic constant. Fewer
components give a reduced-rank map through the most correlated directions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .fitted import AffineMap, register_fitted_map
from .layers import Centred, Layer, component_count
from .ridge import choose_ridge


@dataclass(kw_only=True)
class CCAMap(AffineMap):
    kind: ClassVar[str] = "cca"
    components: int                 # canonical pairs kept
    ridge: float                    # regularisation, relative to the mean feature variance (validated)
    correlations: list = field(default_factory=list)   # ρ_i on the training sentences, largest first

    def details(self) -> dict:
        return {"components": self.components, "ridge": self.ridge,
                "top_correlations": [round(c, 4) for c in self.correlations[:5]],
                "shape": list(self.weight.shape)}


def whitening(side: Centred, ridge: float) -> torch.Tensor:
    """(S + p·I)^(-1/2) for the side's scatter S, with p = ``ridge`` × mean feature variance."""
    def make():
        values, vectors = side.spectrum
        penalty = ridge * values.sum() / side.width
        return (vectors * (values + penalty).rsqrt()) @ vectors.T
    return side.derived(("whitening", ridge), make)


def canonical_pairs(x: Centred, y: Centred, ridge: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a (d_x, c), b (d_y, c), ρ (c,)): canonical directions of both sides and their correlations,
    strongest first, c = min(d_x, d_y)."""
    white_x, white_y = whitening(x, ridge), whitening(y, ridge)
    u, correlations, vh = torch.linalg.svd(white_x @ (x.data.T @ y.data) @ white_y, full_matrices=False)
    return white_x @ u, white_y @ vh.T, correlations


@register_fitted_map("cca", CCAMap, method=lambda align: f"cca-ridgecv-c{align.components or 'auto'}")
def fit_cca(x: Layer, y: Layer, align) -> CCAMap:
    source, target = x.centred("train"), y.centred("train")
    components = component_count("cca", align.components, source, target)
    ridge = choose_ridge(x, y)
    a, b, correlations = canonical_pairs(source, target, ridge)
    a, b, correlations = a[:, :components], b[:, :components], correlations[:components]
    scatter = target.derived("scatter", lambda: target.data.T @ target.data)
    scatter_b = scatter @ b
    decode = torch.linalg.pinv(b.T @ scatter_b, hermitian=True) @ scatter_b.T  # (components, d_y)
    weight = (a * correlations) @ decode
    return CCAMap(weight=weight, bias=target.mean - source.mean @ weight, components=components,
                  ridge=ridge, correlations=correlations.tolist())
