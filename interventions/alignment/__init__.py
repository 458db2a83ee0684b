"""Bridging two activation spaces: maps registered by name (``Align(kind=...)`` picks one).

``none`` refuses a width mismatch with an explanation, ``trailing`` applies AC's rule. The fitted
kinds map A's block-k to B's block-j last-token residuals, fitted on a sentence corpus:

- ``linear``: ridge least squares (as in Ramesh & Li, 2025);
- ``procrustes``: a rotation and one scale between the centred states (via PCA across widths);
- ``cca``: regularised canonical correlation analysis, decoded into B's space;
- ``relative``: relative representations (cosines to shared anchor sentences), decoded into B's space.

Each reports its held-out R² and mean cosine (``describe()``), so users can judge whether a graft
through it can carry anything. Activations for every block are cached once per (model weights,
corpus) and maps once per fingerprint, so any (k, j) map is cheap afterwards. One module per map
family; ``fitted`` holds the shared pipeline and ``layers`` what a fit reads.
"""

from . import cca, hidden_to_embedding, linear, procrustes, relative  # noqa: F401  (each registers its kind)
from .cca import CCAMap
from .errors import DegenerateFitError, UnknownMapError
from .fitted import AffineMap, FittedKind, FittedMap, fit_on_corpus, heldout_fit, register_fitted_map
from .graft import combine_trailing, graft, width_mismatch
from .layers import HELD_OUT_FRACTION, Layer, Split
from .linear import LinearMap, fit_linear_map
from .maps import MAPS, Identity, register_map
from .procrustes import ProcrustesMap
from .relative import RelativeMap
from .ridge import RIDGE_GRID, _r2, _ridge_solve
from .states import corpus_activations, corpus_embeddings, paired_states

__all__ = [
    "AffineMap", "CCAMap", "DegenerateFitError", "FittedKind", "FittedMap", "HELD_OUT_FRACTION",
    "Identity", "Layer", "LinearMap", "MAPS", "ProcrustesMap", "RIDGE_GRID", "RelativeMap", "Split",
    "UnknownMapError", "_r2", "_ridge_solve", "combine_trailing", "corpus_activations", "corpus_embeddings",
    "fit_linear_map", "fit_on_corpus", "graft", "heldout_fit", "paired_states", "register_fitted_map",
    "register_map", "width_mismatch",
]
