"""The covariance control: Gaussian noise with the mean and covariance of real messages.

A message's own positions cannot serve as the reference (noise in their span still carries their
content), so the Gaussian is fitted on a population of other messages' vectors (e.g. the latents of
training items, never the evaluated ones), with Ledoit-Wolf shrinkage because a population holds
few vectors for its width. Each row's noise has the length of the message it replaces and is
seeded by a key (the row's item), so a control is the same on every run and resume.

It is not a registered ``CONTROLS`` entry: those see one message at a time and have no population.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .errors import InterventionError
from .statistics import ledoit_wolf


class CovarianceControlError(InterventionError, ValueError):
    pass


@dataclass(frozen=True)
class CovarianceNoise:
    mean: torch.Tensor        # (d,)
    factor: torch.Tensor      # (d, d) lower Cholesky factor of the shrunk covariance
    shrinkage: float
    n_vectors: int

    @classmethod
    def fit(cls, vectors: torch.Tensor) -> CovarianceNoise:
        """From a population of message vectors (n, d), positions pooled."""
        if vectors.dim() != 2 or len(vectors) < 2:
            raise CovarianceControlError(f"the covariance control needs at least 2 reference vectors (n, d), "
                                         f"got shape {tuple(vectors.shape)}")
        x = vectors.double()
        covariance, shrinkage = ledoit_wolf(x)
        jitter = 1e-9 * float(covariance.diagonal().mean().clamp(min=1e-30))
        factor = torch.linalg.cholesky(covariance + jitter * torch.eye(x.shape[1], dtype=x.dtype))
        return cls(x.mean(0), factor, shrinkage, len(x))

    def sample(self, n: int, key: str) -> torch.Tensor:
        """(n, d) float32 draws, seeded by ``key``."""
        seed = int.from_bytes(hashlib.sha256(f"covariance:{key}".encode()).digest()[:8], "little") % (2 ** 63)
        white = torch.randn(n, len(self.mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return (self.mean + white @ self.factor.T).float()

    def describe(self) -> dict:
        return {"kind": "covariance", "n_vectors": self.n_vectors, "shrinkage": round(self.shrinkage, 4)}
