"""Cascades between a large model L (role A) and a small one S (role B), on generation tasks.

- ``reverse_cascade``: L opens the answer and S finishes it, handed off by text, by L's states as soft
  tokens, or both (``interventions.spec.handoff``), at a fixed n or when an entropy trigger fires.
  L's generation is kept per item, so every n and trigger of a sweep slices one decode.
- ``cascade`` (the classic one): S answers first; when S is not confident (mean token log-probability
  below ``threshold``, or mean entropy above it) the item escalates to L, which answers alone. Both
  answers come from the same kept generations, so a threshold sweep costs one S and one L decode.

Every row's compute is split between L and S (``compute.role_flops``: A and B).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, NonNegativeInt, PositiveInt

from ...compute import Compute
from ...spec.handoff import Handoff
from ...spec.trigger import Trigger
from ..prompts import answer_prompt
from .ac import control_suffix
from .base import Context, Outcome, Protocol, answer, register_protocol, scored, vector_control


@register_protocol("reverse_cascade")
class ReverseCascade(Protocol):
    """L writes the first tokens of the answer, S writes the rest."""

    roles = ("A", "B")
    sweep = ("n",)
    quiet_defaults = ("window", "min_tokens", "max_tokens", "map", "markers", "horizon", "control")

    carry: Literal["text", "latent", "both"] = Field("text", description="what S receives of L's start")
    trigger: Literal["fixed", "entropy_below", "entropy_drop"] = Field("fixed", description="when S takes over")
    n: Union[NonNegativeInt, Literal["all"]] = Field("all", description="fixed: L's tokens before the handoff")
    threshold: float = Field(0.5, description="entropy_below: nats")
    margin: float = Field(0.5, description="entropy_drop: nats below the running mean")
    window: PositiveInt = Field(1, description="entropy triggers: steps averaged")
    min_tokens: NonNegativeInt = Field(0, description="no handoff before this many tokens")
    max_tokens: Optional[NonNegativeInt] = Field(None, description="entropy triggers: hand off here at the latest")
    map: Literal["auto", "vocabulary", "matched_tokens", "none"] = Field(
        "auto", description="latent: into S's input embeddings, through the shared vocabulary or matched tokens")
    markers: tuple[str, str] = Field(("", ""), description="latent: texts around the soft tokens")
    horizon: Optional[PositiveInt] = Field(None, description="the most tokens L writes (default: max_new_tokens)")
    control: Literal["none", "random", "mismatched"] = Field(
        "none", description="latent: random states of the same norms; any carry: L's start on another item")

    def as_trigger(self) -> Trigger:
        return Trigger(self.trigger, self.n if self.trigger == "fixed" else "all", self.threshold, self.margin,
                       self.window, self.min_tokens, self.max_tokens)

    def applies_to(self, task, pair) -> bool:
        return task.generated and not (self.control == "random" and self.carry == "text")

    @property
    def family(self) -> str:
        return (f"{self.kind}_{self.carry}" + ("" if self.trigger == "fixed" else f"_{self.trigger}")
                + control_suffix(self.control))

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.carry}_{self.as_trigger().label}{control_suffix(self.control)}"

    def run(self, ctx: Context, items):
        lead, finisher = ctx.model("A"), ctx.model("B")
        prompts = {"A": [answer_prompt(lead, ctx.task, it) for it in ctx.sources(items, self.control)],
                   "B": [answer_prompt(finisher, ctx.task, it) for it in items]}
        spec = Handoff(trigger=self.as_trigger(), carry=self.carry, map=self.map, markers=self.markers,
                       horizon=self.horizon or ctx.max_new_tokens)
        return answer(ctx, "B", prompts, items, [spec], vector_control(self.control))


@register_protocol("cascade")
class Cascade(Protocol):
    """S answers; an item S is unsure of escalates to L, which answers alone."""

    roles = ("A", "B")
    sweep = ("threshold",)

    confidence: Literal["logprob", "entropy"] = Field(
        "logprob", description="S's mean token log-probability (escalate below), or mean entropy (above)")
    threshold: float = Field(description="where S's answer escalates to L")

    def applies_to(self, task, pair) -> bool:
        return task.generated

    @property
    def family(self) -> str:
        return f"{self.kind}_{self.confidence}"

    @property
    def name(self) -> str:
        return f"{self.family}_t{self.threshold:g}"

    def run(self, ctx: Context, items):
        session = ctx.session
        alone = {role: session.leads(role, [answer_prompt(ctx.model(role), ctx.task, it) for it in items],
                                     ctx.max_new_tokens) for role in ("B", "A")}
        outcomes = []
        for row, item in enumerate(items):
            small, large = alone["B"][row], alone["A"][row]
            steps = max(len(small.ids), 1)
            score = (sum(small.logprob) if self.confidence == "logprob" else sum(small.entropy)) / steps
            escalate = score < self.threshold if self.confidence == "logprob" else score > self.threshold
            compute = solo_cost(session, "B", small)
            chosen = small
            if escalate:
                compute.merge(solo_cost(session, "A", large))
                chosen = large
            text = ctx.model("A" if escalate else "B").tokenizer.decode(chosen.ids, skip_special_tokens=True)
            outcome: Outcome = scored(ctx.task, item, text, compute)
            outcome.extra.update(confidence=round(score, 4), escalated=escalate)
            outcomes.append(outcome)
        return outcomes


def solo_cost(session, role: str, lead) -> Compute:
    """What a model's kept generation cost: its prompt and every token it wrote."""
    cost = Compute(wall_s=lead.wall_s)
    cost.add_generation(role, session.shape(role), lead.prompt_tokens, len(lead.ids))
    return cost
