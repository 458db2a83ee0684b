"""Plain PyTorch forward hooks on the transformers modules: the lightest backend."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..sites import Edit, ResolvedSite
from .base import Backend, CaptureState, EditState, ForwardOutput, hooked_forward, hooked_generate


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value, new):
    return (new, *value[1:]) if isinstance(value, tuple) else new


@contextmanager
def installed_hooks(model, captures: CaptureState | None, edits: list[Edit]):
    handles = []

    def add(block: int, stream: str, transform):
        module, where = model.adapter.stream_module(model.hf, block, stream)
        if where == "output":
            def hook(_module, _args, output):
                return _replace_first(output, transform(_first(output)))
            handles.append(module.register_forward_hook(hook))
        else:
            def pre_hook(_module, args, kwargs):
                if args:
                    return (transform(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": transform(kwargs["hidden_states"])}
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))

    try:
        for edit in edits:  # edits first: a capture at an edited site reads the edited stream
            add(edit.site.block, edit.site.stream, EditState(edit))
        if captures is not None:
            for index, site in enumerate(captures.sites):
                def record(acts, index=index):
                    captures.record(index, acts)
                    return acts
                add(site.block, site.stream, record)
        yield
    finally:
        for handle in handles:
            handle.remove()


class TorchHooksBackend(Backend):
    name = "torch"

    @torch.inference_mode()
    def forward(self, model, batch, captures: list[ResolvedSite] = (), edits: list[Edit] = (),
                stop_after_captures: bool = False) -> ForwardOutput:
        state = CaptureState(captures, stop_after_captures and bool(captures))
        with installed_hooks(model, state, list(edits)):
            return hooked_forward(model.hf, model.on_device(batch), state)

    @torch.inference_mode()
    def generate(self, model, batch, edits: list[Edit] = (), max_new_tokens: int = 20, **kwargs):
        with installed_hooks(model, None, list(edits)):
            return hooked_generate(model, model.hf, model.on_device(batch), max_new_tokens, kwargs)
