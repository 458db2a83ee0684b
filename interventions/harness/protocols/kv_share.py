"""``kv_share``: B answers while attending to A's key/value cache (KVComm, Shi et al. 2025;
Cache-to-Cache, Fu et al. 2025), through a ``KVTransfer`` spec.

A reads its sender prompt (``sender``, as in ``ac``: the raw private context or question, the same in
the chat template, or A's own completion); B runs its answer prompt after A's tokens (positions
continue after them), seeing A's keys and values on the chosen ``layers`` only:

- ``all``; a block ``"start..stop"`` (both included, ints or depths like ``"25%..75%"``); a
  comma-separated list ``"0,3,5"`` (a YAML list sweeps, so a list of layers is one string);
- ``importance``: per item, the ``n_layers`` layers where B's tokens attend most to A's positions
  (KVComm's attention-importance selection, without its depth prior; one extra B forward, charged).

Controls: ``random`` replaces every layer's keys and values with random vectors of the same norm per
position (so attention sees a cache of the right scale and length that carries nothing), ``zero``
with zeros (B's attention is only diluted), ``mismatched`` sends another item's cache.

Only pairs of one architecture (same family, layers, key/value heads, head width) can share a cache.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveInt, model_validator

from ...spec import KVTransfer
from ..prompts import answer_prompt
from .ac import Control, control_suffix, sender_texts
from .base import Context, Protocol, add_costs, answer, register_protocol, vector_control


def spec_layers(layers: str):
    """The protocol's one-string layer choice as ``KVTransfer.layers`` takes it."""
    if "," not in layers:
        return layers
    parts = [p.strip() for p in layers.split(",") if p.strip()]
    return tuple(int(p) if p.lstrip("-").isdigit() else (p if p.endswith("%") else float(p)) for p in parts)


@register_protocol("kv_share")
class KVShare(Protocol):
    """B attends to A's key/value cache on the chosen layers."""

    roles = ("A", "B")
    sweep = ("layers",)

    layers: str = Field("all", description="all, a block 'start..stop', a list '0,3,5', or importance")
    n_layers: PositiveInt | None = Field(None, description="layers=importance: layers kept per item")
    sender: Literal["raw", "chat", "completion"] = Field("raw", description="what A reads (as in ac)")
    completion_tokens: PositiveInt = Field(32, description="sender=completion: A writes up to this many tokens")
    temperature: NonNegativeFloat = Field(0.7, description="sender=completion: sampling temperature")
    control: Control = Field("none", description="replace the cache: random, zero or mismatched")

    @model_validator(mode="after")
    def _valid_layers(self):
        try:
            self.spec()
        except ValueError as error:   # a SpecFormatError, named as this protocol's field
            raise ValueError(str(error).replace("kv_transfer.", "kv_share.")) from None
        return self

    def spec(self) -> KVTransfer:
        return KVTransfer(source="A", target="B", layers=spec_layers(self.layers), n_layers=self.n_layers)

    def _suffix(self) -> str:
        variant = "" if self.sender == "raw" else f"_{self.sender}"
        return f"{variant}{control_suffix(self.control)}"

    @property
    def family(self) -> str:
        return f"kv_share{self._suffix()}"

    @property
    def name(self) -> str:
        label = self.layers.replace(",", "-").replace("..", "to").replace("%", "pct").replace(" ", "")
        if self.layers == "importance":
            label += str(self.n_layers)
        return f"kv_share_{label}{self._suffix()}"

    def run(self, ctx: Context, items):
        sources = ctx.sources(items, self.control)
        texts, costs = sender_texts(ctx, sources, self.sender, self.completion_tokens, self.temperature)
        receiver = ctx.model("B")
        prompts = {"A": texts, "B": [answer_prompt(receiver, ctx.task, it) for it in items]}
        outcomes = answer(ctx, "B", prompts, items, [self.spec()], vector_control(self.control))
        if self.control == "mismatched":
            for outcome, source in zip(outcomes, sources):
                outcome.extra["message_from"] = source.id
        return add_costs(outcomes, costs)
