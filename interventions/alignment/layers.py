"""What a map fit reads: one model's corpus states at one layer, split into training and held-out
sentences, centred, with the spectrum every map kind needs.

Everything derived from a layer (its centring, eigendecomposition, projections, whitening) is
computed on first use and kept, so fitting every layer pair of two models
(``interventions align``) pays for each layer's decompositions once, not once per partner layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

from .errors import DegenerateFitError

HELD_OUT_FRACTION = 0.1
VALIDATION_FRACTION = 0.1      # of the training rows, to pick a ridge strength
MIN_SENTENCES = 30             # below this the validation and held-out slices hold 1-2 sentences
# corpus states come from float32 forward passes: directions whose singular value is below
# s_max * max(n, d) * eps(float32) are rounding noise, not data (numpy's matrix_rank rule)
RANK_EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True, eq=False)
class Split:
    """Corpus rows: ``heldout`` judges a map, ``train`` fits it. Within ``train``, maps with a
    strength to pick fit on ``fit`` and are scored on ``val``, then refitted on all of ``train``."""

    train: torch.Tensor
    heldout: torch.Tensor
    fit: torch.Tensor
    val: torch.Tensor

    @classmethod
    def of(cls, n: int, seed: int) -> "Split":
        if n < MIN_SENTENCES:
            raise DegenerateFitError(f"fitting a map needs at least {MIN_SENTENCES} corpus sentences "
                                     f"(got {n}); raise n_sentences")
        n_heldout = max(1, int(n * HELD_OUT_FRACTION))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        heldout, train = perm[:n_heldout], perm[n_heldout:]
        n_val = max(1, int(len(train) * VALIDATION_FRACTION))
        return cls(train=train, heldout=heldout, fit=train[n_val:], val=train[:n_val])


class Centred:
    """Rows minus their mean, and the eigendecomposition of their scatter matrix dataᵀdata
    (largest first): principal directions, rank, ridge solutions and whitening all come from it."""

    def __init__(self, rows: torch.Tensor, what: str):
        self.what = what
        self.mean = rows.mean(0)
        self.data = rows - self.mean
        self._derived: dict = {}

    @property
    def n(self) -> int:
        return self.data.shape[0]

    @property
    def width(self) -> int:
        return self.data.shape[1]

    @cached_property
    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(eigenvalues (d,), eigenvectors (d, d) as columns), eigenvalues descending."""
        values, vectors = torch.linalg.eigh(self.data.T @ self.data)
        return values.flip(0).clamp(min=0), vectors.flip(1)

    @cached_property
    def rank(self) -> int:
        values = self.spectrum[0]
        if values[0] <= 0:
            return 0
        tolerance = values[0] * (max(self.n, self.width) * RANK_EPS) ** 2  # on s², as eigenvalues are
        return int((values > tolerance).sum())

    def require_variance(self) -> None:
        if self.rank == 0:
            raise DegenerateFitError(f"{self.what} is the same for every training sentence: there is no "
                                     "variance to map. Pick another layer.")

    def basis(self, components: int) -> torch.Tensor:
        """(d, components): the top principal directions."""
        return self.spectrum[1][:, :components]

    def projected(self, components: int) -> torch.Tensor:
        """(n, components): the centred rows in the top principal directions."""
        return self.derived(("projected", components), lambda: self.data @ self.basis(components))

    def derived(self, key, make: Callable):
        """``make()``, computed once per key (whitening for a strength, projections, ...)."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]


class Layer:
    """One model's states at one layer over the corpus rows (n, d), in float64, with its split."""

    def __init__(self, states: torch.Tensor, split: Split, what: str):
        if not torch.isfinite(states).all():
            raise DegenerateFitError(f"{what} holds NaN or infinite values (the forward pass overflowed); "
                                     "pick another layer or load the model in a wider dtype")
        self.states = states.double()
        self.split = split
        self.what = what
        self._centred: dict[str, Centred] = {}
        self._derived: dict = {}

    @property
    def width(self) -> int:
        return self.states.shape[1]

    def rows(self, part: str) -> torch.Tensor:
        """The states of one part of the split: "train", "heldout", "fit" or "val"."""
        return self.states[getattr(self.split, part)]

    def centred(self, part: str) -> Centred:
        if part not in self._centred:
            self._centred[part] = Centred(self.rows(part), f"{self.what} ({part} sentences)")
        return self._centred[part]

    def derived(self, key, make: Callable):
        """``make()``, computed once per key (e.g. relative coordinates for a set of anchors)."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]


def sentences_for(train_rows: int) -> int:
    """The fewest corpus sentences whose training split has ``train_rows`` rows."""
    n = train_rows
    while n - max(1, int(n * HELD_OUT_FRACTION)) < train_rows:
        n += 1
    return n


def component_count(kind: str, requested: int | None, x: Centred, y: Centred) -> int:
    """How many shared directions a map fits: ``requested``, or by default as many as both sides'
    training states span (at most the smaller width). Refuses counts the data cannot support."""
    most = min(x.rank, y.rank)
    spans = (f"{x.what} spans {x.rank} directions and {y.what} {y.rank} "
             f"(widths {x.width} and {y.width}, {x.n} training sentences)")
    if requested is not None:
        if requested > most:
            raise DegenerateFitError(f"{kind} asked for {requested} components, but {spans}: at most "
                                     f"{most}. Set components <= {most}, or leave it unset.")
        return requested
    widths = min(x.width, y.width)
    if most < widths and most >= x.n - 1:
        # limited by the sentence count, not by the data: a full-width map would be underdetermined
        raise DegenerateFitError(f"{kind}: {spans}, fewer than the {widths} a full map needs. Fit on at least "
                                 f"{sentences_for(widths + 1)} sentences (n_sentences), or set "
                                 f"components <= {most}.")
    return most
