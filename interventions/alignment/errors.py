"""What goes wrong when bridging two spaces: an unknown map kind, or a fit the data cannot support."""

from __future__ import annotations

from ..errors import InterventionError


class UnknownMapError(InterventionError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DegenerateFitError(InterventionError, ValueError):
    """The corpus states cannot support the fit asked for (no variance, too few sentences, more
    components than the data spans, non-finite states); the message says what to change."""
