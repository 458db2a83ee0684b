"""Protocols: one module per family, each a registered, typed plugin (see ``base``).

Every module in this package is imported here, so a new protocol is one new file.
"""

from ...discover import import_all
from .base import PROTOCOLS, Context, Outcome, Protocol, UnknownProtocolError, answer, register_protocol
from .traced import Batch, TracingResultError, protocol

import_all(__name__, __path__)

__all__ = ["Batch", "Context", "Outcome", "PROTOCOLS", "Protocol", "TracingResultError", "UnknownProtocolError",
           "answer", "protocol", "register_protocol"]
