"""``relative``: relative representations (Moschella et al., 2023).

A state is described by its cosine similarity to the states of a shared set of anchor inputs:
``Align.anchors`` corpus sentences (drawn with ``Align.seed`` from the training sentences), which
both models read. If the two spaces differ by an angle-preserving transform, A's and B's relative
coordinates of the same sentence agree, whatever the widths. Each side is centred on its own
training mean before the cosine (residual streams share a large common direction that would make
every cosine near 1).

To land in B's residual space, B's states are decoded from B's relative coordinates by ridge least
squares fitted on the training sentences; a graft applies that decoder to A's relative coordinates.
The ridge strength is picked on the validation slice with A's coordinates as inputs, i.e. for the
whole A → relative → B path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .errors import DegenerateFitError
from .fitted import FittedMap, register_fitted_map
from .layers import Layer
from .ridge import ridge_validated


@dataclass(kw_only=True)
class RelativeMap(FittedMap):
    kind: ClassVar[str] = "relative"
    source_mean: torch.Tensor       # (d_source,) A's training mean, subtracted before the cosine
    anchors: torch.Tensor           # (m, d_source) A's anchor states, centred, unit norm
    decoder: torch.Tensor           # (m, d_target) B's relative coordinates -> B's states
    bias: torch.Tensor              # (d_target,)
    ridge: float                    # decoder strength, relative to the mean feature variance

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        acts = acts.to(self.decoder.dtype)
        return relative_coordinates(acts, self.source_mean, self.anchors) @ self.decoder + self.bias

    def details(self) -> dict:
        return {"anchors": self.anchors.shape[0], "ridge": self.ridge,
                "shape": [self.anchors.shape[1], self.decoder.shape[1]]}


def relative_coordinates(states: torch.Tensor, mean: torch.Tensor, unit_anchors: torch.Tensor) -> torch.Tensor:
    """(..., m): cosine of each centred state to each centred anchor (a state at the mean gives 0)."""
    return F.normalize(states - mean, dim=-1) @ unit_anchors.T


def anchor_rows(layer: Layer, count: int, seed: int) -> torch.Tensor:
    """Corpus rows of ``count`` anchor sentences, drawn from the rows the decoder is fitted on."""
    pool = layer.split.fit
    if count > len(pool):
        raise DegenerateFitError(f"relative asked for {count} anchors, but only {len(pool)} training sentences "
                                 f"can serve as anchors. Set anchors <= {len(pool)}, or fit on more sentences.")
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]]


def relative_layer(layer: Layer, rows: torch.Tensor) -> tuple[Layer, torch.Tensor, torch.Tensor]:
    """(relative coordinates of every row as a Layer, the centring mean, the unit anchors)."""
    def make():
        mean = layer.centred("train").mean
        anchors = F.normalize(layer.states[rows] - mean, dim=-1)
        coordinates = relative_coordinates(layer.states, mean, anchors)
        return Layer(coordinates, layer.split, f"{layer.what} relative to {len(rows)} anchors"), mean, anchors
    return layer.derived(("relative", tuple(rows.tolist())), make)


@register_fitted_map("relative", RelativeMap, method=lambda align: f"relative-a{align.anchors}")
def fit_relative(x: Layer, y: Layer, align) -> RelativeMap:
    rows = anchor_rows(x, align.anchors, align.seed)
    source, mean, anchors = relative_layer(x, rows)
    target, _, _ = relative_layer(y, rows)
    decoder, bias, ridge = ridge_validated(target, y, validation_design=source)
    return RelativeMap(source_mean=mean, anchors=anchors, decoder=decoder, bias=bias, ridge=ridge)
