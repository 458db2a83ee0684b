"""TransformerLens backend: TransformerBridge hook points (``blocks.{l}.hook_resid_post`` …).

The bridge swaps the model's modules for hooked wrappers and switches attention to eager
in place, so it is booted on a private copy; the zoo model stays untouched for the others.
"""

from __future__ import annotations

import copy

import torch

from ..models.loaded import LoadedModel
from ..sites import Edit, ResolvedSite
from .base import Backend, CaptureState, EditState, ForwardOutput, hooked_forward, hooked_generate


def bridge_for(model: LoadedModel):
    """The TransformerBridge of ``model`` (booted once, cached on the model)."""
    if "transformer_lens" not in model.wrappers:
        from transformer_lens.model_bridge import TransformerBridge

        hf_copy = copy.deepcopy(model.hf)
        bridge = TransformerBridge.boot_transformers(model.name, hf_model=hf_copy, tokenizer=model.tokenizer)
        model.wrappers["transformer_lens"] = (bridge, hf_copy)
    return model.wrappers["transformer_lens"]


def _hooks(model: LoadedModel, captures: CaptureState | None, edits: list[Edit]) -> list[tuple[str, object]]:
    hook_name = model.adapter.hook_name
    hooks = []
    for edit in edits:  # edits first: a capture at an edited site reads the edited stream
        state = EditState(edit)
        hooks.append((hook_name(edit.site.block, edit.site.stream), lambda acts, hook, state=state: state(acts)))
    if captures is not None:
        for index, site in enumerate(captures.sites):
            def record(acts, hook, index=index):
                captures.record(index, acts)
                return acts
            hooks.append((hook_name(site.block, site.stream), record))
    return hooks


class TransformerLensBackend(Backend):
    name = "transformer_lens"

    @torch.inference_mode()
    def forward(self, model, batch, captures: list[ResolvedSite] = (), edits: list[Edit] = (),
                stop_after_captures: bool = False) -> ForwardOutput:
        bridge, hf = bridge_for(model)
        state = CaptureState(captures, stop_after_captures and bool(captures))
        with bridge.hooks(fwd_hooks=_hooks(model, state, list(edits))):
            return hooked_forward(hf, batch, state)

    @torch.inference_mode()
    def generate(self, model, batch, edits: list[Edit] = (), max_new_tokens: int = 20, **kwargs):
        bridge, hf = bridge_for(model)
        with bridge.hooks(fwd_hooks=_hooks(model, None, list(edits))):
            return hooked_generate(model, hf, batch, max_new_tokens, kwargs)
