"""What every backend does: forward with captures and edits, and generation with edits.

A batch is the keyword arguments of the transformers forward: ``input_ids`` or ``inputs_embeds``
(soft tokens), ``attention_mask``, and optionally ``position_ids``, ``past_key_values``,
``use_cache``, ``logits_to_keep``, ``output_hidden_states``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..models.loaded import LoadedModel, output_cache
from ..sites import Edit, ResolvedSite, apply_edit, decode_positions, gather


@dataclass
class ForwardOutput:
    logits: torch.Tensor | None        # None when the forward stopped after the last capture
    captures: list[torch.Tensor]       # one (batch, n_pos, d) tensor per requested capture
    cache: object = None               # past_key_values, when the batch asked for use_cache=True
    hidden: torch.Tensor | None = None  # last hidden state (batch, seq, d), when output_hidden_states


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early (the sender needs no later layers)."""


class Backend(ABC):
    name: str

    @abstractmethod
    def forward(self, model: LoadedModel, batch: dict, captures: list[ResolvedSite] = (),
                edits: list[Edit] = (), stop_after_captures: bool = False) -> ForwardOutput:
        ...

    @abstractmethod
    def generate(self, model: LoadedModel, batch: dict, edits: list[Edit] = (),
                 max_new_tokens: int = 20, **generate_kwargs) -> torch.Tensor:
        """New token ids only, shape (batch, <= max_new_tokens). Greedy unless told otherwise."""


class EditState:
    """Applies one edit on each call of a hook: prompt positions at prefill, newest token after."""

    def __init__(self, edit: Edit):
        self.edit = edit
        self.calls = 0

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        first = self.calls == 0
        self.calls += 1
        if first:
            return apply_edit(acts, self.edit.site.positions, self.edit.fn)
        if self.edit.every_step:
            return apply_edit(acts, decode_positions(acts.shape[0]), self.edit.fn)
        return acts


def captured(acts: torch.Tensor, positions) -> torch.Tensor:
    """A capture buffer: the gathered positions, detached, in fp32 whatever the model runs in."""
    return gather(acts, positions).detach().float()


class CaptureState:
    """Collects gathered activations; can stop the forward once every capture is in."""

    def __init__(self, sites: list[ResolvedSite], stop: bool):
        self.sites = list(sites)
        self.values: list[torch.Tensor | None] = [None] * len(self.sites)
        self.stop = stop

    def record(self, index: int, acts: torch.Tensor) -> None:
        self.values[index] = captured(acts, self.sites[index].positions)
        if self.stop and all(v is not None for v in self.values):
            raise StopForward


def generation_defaults(model: LoadedModel, max_new_tokens: int, kwargs: dict) -> dict:
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": model.pad_token_id, **kwargs}


def output_of(out, batch: dict, state: CaptureState) -> ForwardOutput:
    hidden = out.hidden_states[-1] if batch.get("output_hidden_states") else None
    return ForwardOutput(out.logits, state.values, output_cache(out) if batch.get("use_cache") else None, hidden)


def hooked_forward(hf, batch: dict, state: CaptureState) -> ForwardOutput:
    """Call ``hf`` with hooks already installed; a capture may end the pass early."""
    try:
        out = hf(**batch)
    except StopForward:
        return ForwardOutput(None, state.values)
    return output_of(out, batch, state)


def new_tokens(ids: torch.Tensor, batch: dict) -> torch.Tensor:
    """generate returns prompt + new ids for token prompts, new ids only for embedding prompts."""
    return ids if "inputs_embeds" in batch else ids[:, batch["input_ids"].shape[1]:]


def hooked_generate(model: LoadedModel, hf, batch: dict, max_new_tokens: int, kwargs: dict) -> torch.Tensor:
    """Generation with hooks already installed; new tokens only."""
    return new_tokens(hf.generate(**batch, **generation_defaults(model, max_new_tokens, kwargs)), batch)
