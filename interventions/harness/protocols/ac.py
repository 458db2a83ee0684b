"""``ac``: activation communication (Ramesh & Li, ICML 2025) through a ``Splice`` spec.

A reads its sender prompt; its state at block k (last token) is combined into B's last prompt
token at block j, through a fitted map when the models differ; B answers. What A reads is explicit
(``sender``, the paper's App. B.5 variants):

- ``raw``: the private context (or the question) as plain text, ending on its content;
- ``chat``: the same wrapped in the chat template (its last token is then the assistant header);
- ``completion``: A reads the chat-formatted text and writes up to ``completion_tokens`` tokens at
  ``temperature``; the state sent is that of the last token of its completion.

``control`` replaces the message: ``random`` (a seeded vector of the message's norm), ``zero``, or
``mismatched`` (A reads another item of the task).

A merge's parameters (``scale``, ``rank``, ``top_p``, ``norm``; None: the merge's default) go into the
splice's ``combine_args`` and into the name when set. With ``diagnostics`` (on by default) each row
records ``extra["diagnostics"]``: where the merged state sits among B's natural states, KL(clean ||
intervened) at the answer position and the message's logit-lens tokens (``interventions.diagnostics``),
measured with one extra forward of B per batch that is not charged to the row.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Literal

from pydantic import Field, NonNegativeFloat, PositiveInt, field_validator, model_validator

from ...alignment import MAPS
from ...combine import COMBINES, check_combine_args
from ...completions import CompletionStore, completion_key
from ...compute import Compute
from ...diagnostics import splice_diagnostics
from ...session import Sampler
from ...spec import Align, Site, Splice
from ...spec.base import Layer, check_layer
from ..prompts import answer_prompt, sender_prompt
from .base import Context, Protocol, add_costs, answer, fmt, register_protocol, vector_control

Control = Literal["none", "random", "zero", "mismatched"]


def control_suffix(control: str) -> str:
    return "" if control == "none" else f"_ctl-{control}"


def sender_texts(ctx: Context, items, sender: str, completion_tokens: int = 0, temperature: float = 0.0,
                 role: str = "A"):
    """What the sender reads for each item, and the cost of producing it (its completion, when asked)."""
    model = ctx.model(role)
    if sender != "completion":
        return [sender_prompt(model, ctx.task, it, sender) for it in items], [Compute() for _ in items]
    # under an experiment's sampling, each sampling seed draws its own completion
    seed = f"{ctx.seed}:{ctx.generation['seed']}" if ctx.generation else ctx.seed
    prompts = [sender_prompt(model, ctx.task, it, "chat") for it in items]
    seeds = [int(hashlib.sha256(f"{seed}:{it.id}".encode()).hexdigest()[:8], 16) for it in items]
    keys = [completion_key(p, completion_tokens, temperature, s) for p, s in zip(prompts, seeds)]
    kept = CompletionStore.of(model, ctx.session.backend.name)   # sampled earlier, by this run or another
    new = {k: i for i, k in enumerate(keys) if kept.get(k) is None}
    if new:
        out = ctx.session.decode(role, [prompts[i] for i in new.values()], (), completion_tokens,
                                 Sampler(temperature, [seeds[i] for i in new.values()]))
        kept.put({k: (text, compute) for k, text, compute in zip(new, out.texts, out.compute)})
    texts, costs = [], []
    for prompt, k in zip(prompts, keys):  # every item is charged its completion, sampled now or earlier
        text, compute = kept.get(k)
        texts.append(prompt + text.rstrip())
        costs.append(compute.charged_again(compute.wall_s if k in new else 0.0))
    return texts, costs


@register_protocol("ac")
class AC(Protocol):
    """Activation communication: A's last-token state at block k, combined into B's at block j."""

    roles = ("A", "B")
    sweep = ("k", "j")

    k: Layer = Field(description="sender block: an int, or a relative depth ('50%' or 0.5)")
    j: Layer = Field(description="receiver block")
    combine: str = Field("replace", description="a registered combine function")
    align: str = Field("none", description="a registered map, or auto: linear across models, none within one")
    stream: str = "resid_post"
    sender: Literal["raw", "chat", "completion"] = Field("raw", description="what A reads (see module doc)")
    completion_tokens: PositiveInt = Field(32, description="sender=completion: A writes up to this many tokens")
    temperature: NonNegativeFloat = Field(0.7, description="sender=completion: sampling temperature")
    control: Control = Field("none", description="replace the message: random, zero or mismatched")
    scale: float | None = Field(None, allow_inf_nan=False, description="merges: λ, the weight of what is injected "
                                "(None: 1)")
    rank: int | None = Field(None, ge=1, description="orthogonal_subspace: principal directions of B removed")
    top_p: float | None = Field(None, gt=0, le=100, description="ties: percent of coordinates each delta keeps")
    norm: bool | None = Field(None, description="merges: rescale the result to B's median natural norm")
    diagnostics: bool = Field(True, description="record manifold diagnostics per row (not charged to compute)")

    quiet_defaults = ("scale", "rank", "top_p", "norm", "diagnostics")
    merge_parameters: ClassVar[tuple[str, ...]] = ("scale", "rank", "top_p", "norm")

    @field_validator("combine")
    @classmethod
    def _known_combine(cls, value):
        COMBINES.get(value)
        return value

    @field_validator("align")
    @classmethod
    def _known_map(cls, value):
        if value != "auto":
            MAPS.get(value)
        return value

    @field_validator("stream")
    @classmethod
    def _known_stream(cls, value):
        Site(stream=value)
        return value

    @field_validator("k", "j")
    @classmethod
    def _layer(cls, value):
        check_layer(value)
        return value

    @model_validator(mode="after")
    def _merge_takes_parameters(self):
        check_combine_args(self.combine, self.combine_args())
        return self

    def combine_args(self) -> dict:
        """The merge parameters that are set, as the splice takes them."""
        return {name: getattr(self, name) for name in self.merge_parameters if getattr(self, name) is not None}

    def _suffix(self) -> str:
        merge = "".join(f"_{name}{fmt(value)}" if not isinstance(value, bool) else f"_{'' if value else 'no'}{name}"
                        for name, value in self.combine_args().items())
        align = "" if self.align == "none" else f"_{self.align}"
        variant = "" if self.sender == "raw" else f"_{self.sender}"
        return f"{merge}{align}{variant}{control_suffix(self.control)}"

    @property
    def family(self) -> str:
        return f"ac_{self.combine}{self._suffix()}"

    @property
    def name(self) -> str:
        return f"ac_{self.combine}_k{fmt(self.k)}_j{fmt(self.j)}{self._suffix()}"

    def splice(self, ctx: Context) -> Splice:
        align = self.align
        if align == "auto":
            same = ctx.model("A").weight_sha256 == ctx.model("B").weight_sha256
            align = "none" if same else "linear"
        return Splice(source=Site("A", self.k, -1, self.stream), target=Site("B", self.j, -1, self.stream),
                      combine=self.combine, align=Align(align), combine_args=self.combine_args())

    def run(self, ctx: Context, items):
        sources = ctx.sources(items, self.control)
        texts, costs = sender_texts(ctx, sources, self.sender, self.completion_tokens, self.temperature)
        receiver = ctx.model("B")
        prompts = {"A": texts, "B": [answer_prompt(receiver, ctx.task, it) for it in items]}
        splice, control = self.splice(ctx), vector_control(self.control)
        outcomes = answer(ctx, "B", prompts, items, [splice], control)
        if self.control == "mismatched":
            for outcome, source in zip(outcomes, sources):
                outcome.extra["message_from"] = source.id
        if self.diagnostics:   # measurement, not the channel: nothing is charged to the rows
            for outcome, measured in zip(outcomes, splice_diagnostics(ctx.session, prompts, splice, control)):
                outcome.extra["diagnostics"] = measured
        return add_costs(outcomes, costs)
