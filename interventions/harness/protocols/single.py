"""One model answers alone: ``single`` (either role), ``silent`` (B without the message) and
``skyline`` (B reads A's private context itself)."""

from __future__ import annotations

from typing import Literal

from ..prompts import answer_prompt
from .base import Context, Protocol, answer, register_protocol


@register_protocol("single")
class Single(Protocol):
    """One model answers alone."""

    role: Literal["A", "B"] = "B"

    def needed_roles(self):
        return (self.role,)

    def applies_to(self, task, pair) -> bool:
        return self.role == "B" or pair.get("A") != pair.get("B")  # with A = B, single_A repeats single_B

    @property
    def name(self) -> str:
        return f"single_{self.role}"

    def run(self, ctx: Context, items):
        model = ctx.model(self.role)
        return answer(ctx, self.role, [answer_prompt(model, ctx.task, it) for it in items], items)


@register_protocol("silent")
class Silent(Protocol):
    """B answers without any message: the floor every channel must beat."""

    def run(self, ctx: Context, items):
        return Single(role="B").run(ctx, items)


@register_protocol("skyline")
class Skyline(Protocol):
    """B reads A's private context in its own prompt: the ceiling of a perfect channel."""

    private_context = True

    def run(self, ctx: Context, items):
        model = ctx.model("B")
        return answer(ctx, "B", [answer_prompt(model, ctx.task, it, context=it.context) for it in items], items)
