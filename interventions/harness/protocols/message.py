"""``nl_message``: A writes a one-sentence message about its private context; B reads it."""

from __future__ import annotations

from pydantic import PositiveInt

from ..prompts import answer_prompt, message_prompt
from .base import Context, Protocol, add_costs, answer, register_protocol


@register_protocol("nl_message")
class NLMessage(Protocol):
    """A writes one sentence about its private context; B reads it as text."""

    roles = ("A", "B")
    private_context = True
    message_tokens: PositiveInt = 24

    def run(self, ctx: Context, items):
        sender, receiver = ctx.model("A"), ctx.model("B")
        sent = ctx.session.generate("A", [message_prompt(sender, it) for it in items], (), self.message_tokens,
                                    **ctx.generation_for("A"))
        messages = [text.strip().split("\n")[0] for text in sent.texts]
        prompts = [answer_prompt(receiver, ctx.task, it, note=f"Your partner says: {m}")
                   for it, m in zip(items, messages)]
        outcomes = answer(ctx, "B", prompts, items)
        for outcome, message in zip(outcomes, messages):
            outcome.extra["message"] = message
        return add_costs(outcomes, sent.compute)
