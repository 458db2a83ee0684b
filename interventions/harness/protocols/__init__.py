"""Protocols: one module per family, each a registered, typed plugin (see ``base``)."""

from .base import PROTOCOLS, Context, Outcome, Protocol, UnknownProtocolError, answer, register_protocol
from .traced import Batch, TracingResultError, protocol

# imported for their @register_protocol side effects
from . import single, message, debate, ac, intervention  # noqa: E402,F401  isort: skip

__all__ = ["Batch", "Context", "Outcome", "PROTOCOLS", "Protocol", "TracingResultError", "UnknownProtocolError",
           "answer", "protocol", "register_protocol"]
