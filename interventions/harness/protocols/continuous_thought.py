"""Continuous thought, training-free: ``continuous_thought`` (one model) and ``latent_mas`` (A thinks,
B reads).

A model "thinks" m latent steps: its last hidden state, mapped into its input-embedding space by
LatentMAS's ridge map (``interventions.alignment.hidden_to_embedding``), is fed back as its next input
embedding instead of a sampled token (Coconut: Hao et al., 2024, trained; LatentMAS: Zou et al.,
2025, training-free). The m fed vectors then go into the answering prompt as soft tokens, between
optional marker texts, and B answers as the task scores it (generation or choice log-likelihoods).

- ``continuous_thought``: B thinks after its own answer prompt, then answers. m = 0 is plain answering.
- ``latent_mas``: A thinks on what it reads (the question, or its private context; ``sender``), and B
  reads A's m latent steps. Across models the map goes through the shared vocabulary (A's W_out to
  B's W_in); models with different vocabularies are refused.

The answer re-reads the prompt rather than continuing the thinking's KV cache: the session's
``generate`` and ``loglikelihood`` start from prompts, and the thought's closing marker must follow
the thoughts anyway. Controls: ``pause`` reads m copies of one fixed embedding (that of the filler
text ``pause``, "..." by default: filler tokens as in Pfau et al., 2024, "Let's think dot by dot"),
computing no thoughts; ``random`` (a random direction per thought, of its norm) and ``zero`` replace
the thoughts B reads; ``mismatched`` (latent_mas) has A think about another item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, NonNegativeInt

from ...alignment.hidden_to_embedding import hidden_to_embedding
from ...compute import Compute
from ...errors import InterventionError
from ...session import Session
from ...spec import SoftTokens
from ..prompts import answer_prompt
from .ac import control_suffix, sender_texts
from .base import Context, Protocol, add_costs, answer, register_protocol, vector_control

THOUGHT = "thought"   # the name the thought vectors travel under, beside the prompts


class PauseTextError(InterventionError, ValueError):
    pass


@dataclass
class Thoughts:
    fed: list[torch.Tensor]       # per row (m, d): what the thinker fed back, in its own embedding space
    hidden: list[torch.Tensor]    # per row (m, d): the last hidden states they were mapped from
    readings: list[str]           # per row: the tokens the logits favoured at each step
    compute: list[Compute]


def think(session: Session, role: str, prompts: list[str], m: int, mapping, before: str = "") -> Thoughts:
    """``role`` reads each prompt (then the marker text ``before``) and thinks ``m`` latent steps: each
    step's last hidden state, through ``mapping``, is fed as the next input embedding. Every row
    thinks all m steps (an end-of-sequence reading does not stop a thought) and is charged them."""
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def policy(step):
        vectors = mapping(step.hidden).float()
        steps.append((step.hidden.float(), vectors))
        return vectors

    width = session.model(role).d_model
    specs = [SoftTokens(model=role, message=THOUGHT, markers=(before, ""))] if before else []
    empty = [torch.zeros(0, width) for _ in prompts]
    out = session.decode(role, {role: prompts, THOUGHT: empty}, specs, m, policy, needs_hidden=True,
                         stop_at_eos=False)
    stacked = lambda part: [torch.stack([s[part][r] for s in steps]) if steps else torch.zeros(0, width)  # noqa: E731
                            for r in range(len(prompts))]
    return Thoughts(stacked(1), stacked(0), out.texts, out.compute)


def pause_vectors(model, text: str, m: int) -> torch.Tensor:
    """m copies of the input embedding of ``text``, which must be one token of ``model``."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise PauseTextError(f"pause={text!r} is {len(ids)} tokens for {model.name}; give a text that is one token")
    with torch.inference_mode():
        vector = model.embed(ids).float()
    return vector.expand(m, -1).clone()


def read_thoughts(ctx: Context, prompts: list[str], items, thoughts: list[torch.Tensor], markers: tuple[str, str],
                  control: str):
    """B answers with ``thoughts[r]`` placed after its prompt, between the marker texts."""
    spec = SoftTokens(model="B", message=THOUGHT, at="end", markers=markers)
    return answer(ctx, "B", {"B": prompts, THOUGHT: thoughts}, items, [spec], control)


class _Thinking(Protocol):
    sweep = ("m",)

    m: NonNegativeInt = Field(description="latent steps (m = 0: no thoughts)")
    markers: tuple[str, str] = Field(("", ""), description="texts placed before and after the thoughts B reads")
    realign: bool = Field(True, description="LatentMAS's ridge map; false: only rescale the hidden state")
    pause: str = Field("...", description="control=pause: the one-token filler text whose embedding is repeated")

    @property
    def family(self) -> str:
        return f"{self.kind}{control_suffix(self.control)}"

    @property
    def name(self) -> str:
        return f"{self.kind}_m{self.m}{control_suffix(self.control)}"

    def run(self, ctx: Context, items):
        receiver = ctx.model("B")
        prompts = [answer_prompt(receiver, ctx.task, it) for it in items]
        if self.m == 0:
            return answer(ctx, "B", prompts, items)
        if self.control == "pause":
            return read_thoughts(ctx, prompts, items, [pause_vectors(receiver, self.pause, self.m)] * len(items),
                                 self.markers, "none")
        return self.think_and_answer(ctx, items, prompts)

    def think_and_answer(self, ctx: Context, items, prompts: list[str]):
        """m >= 1 and no pause control: produce the thoughts, and B answers reading them."""
        raise NotImplementedError


@register_protocol("continuous_thought")
class ContinuousThought(_Thinking):
    """B thinks m latent steps after its answer prompt, then answers."""

    control: Literal["none", "random", "zero", "pause"] = Field("none", description="replace the thoughts B reads")

    def think_and_answer(self, ctx: Context, items, prompts: list[str]):
        model = ctx.model("B")
        thoughts = think(ctx.session, "B", prompts, self.m, hidden_to_embedding(model, identity=not self.realign),
                         self.markers[0])
        outcomes = read_thoughts(ctx, prompts, items, thoughts.fed, self.markers, self.control)
        for outcome, reading in zip(outcomes, thoughts.readings):
            outcome.extra["thought_tokens"] = reading
        return add_costs(outcomes, thoughts.compute)


@register_protocol("latent_mas")
class LatentMAS(_Thinking):
    """A thinks m latent steps on what it reads; B reads A's thoughts as soft tokens and answers."""

    roles = ("A", "B")
    sender: Literal["raw", "chat"] = Field("chat", description="what A reads: plain text, or in its chat template")
    control: Literal["none", "random", "zero", "mismatched", "pause"] = Field(
        "none", description="replace the thoughts B reads")

    def think_and_answer(self, ctx: Context, items, prompts: list[str]):
        receiver = ctx.model("B")
        sources = ctx.sources(items, self.control)
        texts, costs = sender_texts(ctx, sources, self.sender)
        sender = ctx.model("A")
        identity = not self.realign
        thoughts = think(ctx.session, "A", texts, self.m, hidden_to_embedding(sender, identity=identity))
        if sender.weight_sha256 == receiver.weight_sha256:
            vectors = thoughts.fed
        else:   # B reads A's hidden states mapped into B's own embedding space
            to_receiver = hidden_to_embedding(sender, receiver, identity=identity)
            vectors = [to_receiver(h) for h in thoughts.hidden]
        outcomes = read_thoughts(ctx, prompts, items, vectors, self.markers, vector_control(self.control))
        for outcome, source, reading in zip(outcomes, sources, thoughts.readings):
            outcome.extra["thought_tokens"] = reading
            if self.control == "mismatched":
                outcome.extra["message_from"] = source.id
        return add_costs(add_costs(outcomes, thoughts.compute), costs)
