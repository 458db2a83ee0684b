"""Exception types for bad input. Each says what was wrong and how to fix it."""

from __future__ import annotations

import difflib


def close_names(name: str, known, n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The known names closest to ``name``: the one "did you mean" helper of the package."""
    return difflib.get_close_matches(str(name), list(known), n=n, cutoff=cutoff)


def suggest(name: str, known: list[str] | tuple[str, ...], n: int = 3) -> str:
    """A ' Did you mean ...?' hint (or '') listing close names."""
    close = close_names(name, known, n)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class InterventionError(Exception):
    """Base class for every error this package raises on bad input."""


class DuplicateNameError(InterventionError, ValueError):
    """Two different places register the same name in one registry."""


class VocabularyMismatchError(InterventionError, ValueError):
    """A channel that goes through the tokens (CIPHER's mixtures, LatentMAS's map) between models
    whose vocabularies differ."""


class PluginError(InterventionError):
    """A plugin file or module could not be loaded; the message names it and the cause."""


class UnknownModelError(InterventionError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CarrierMissingError(InterventionError):
    """A model-carrier package is not installed."""


class WeightHashMismatchError(InterventionError):
    """A weight file's sha256 differs from the expected one; we refuse to load it."""


class LayerOutOfRangeError(InterventionError, IndexError):
    pass


class PositionOutOfRangeError(InterventionError, IndexError):
    pass


class UnknownSiteError(InterventionError, ValueError):
    """An unknown stream / hook name."""


class UnknownCombineError(InterventionError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class WidthMismatchError(InterventionError, ValueError):
    """Source and target widths differ and no alignment was given."""


class SpecFormatError(InterventionError, ValueError):
    """A spec file or dict is malformed; the message names the field."""


class UnknownBackendError(InterventionError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class MissingRoleError(InterventionError, KeyError):
    """A spec names a model role (e.g. 'A') that was not given."""

    def __str__(self) -> str:
        return str(self.args[0])


class StatisticsError(InterventionError, ValueError):
    """Corpus statistics cannot be fit (too few sentences for the width, rank-deficient or
    non-finite states) or are not available; the message says how to fit them."""


class NonFiniteStateError(InterventionError, ValueError):
    """A state holds NaN or inf; the message names the site (model role, block, stream) that produced it."""
