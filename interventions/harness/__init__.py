"""The evaluation harness: tasks, protocols (plugins), the resumable runner, statistics, reports."""

from .protocols import PROTOCOLS, Batch, Context, Outcome, Protocol, answer, protocol, register_protocol
from .tasks import register_task

__all__ = ["Batch", "Context", "Outcome", "PROTOCOLS", "Protocol", "answer", "protocol", "register_protocol",
           "register_task"]
