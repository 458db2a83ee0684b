"""nnsight backend: the same spec executed inside nnsight tracing contexts.

nnsight requires modules to be read in forward order, so captures and edits are
sorted by (block, stream) before the trace body walks them.
"""

from __future__ import annotations

import warnings

import torch

from ..models.loaded import LoadedModel, output_cache
from ..sites import Edit, ResolvedSite
from .base import Backend, EditState, ForwardOutput, captured, generation_defaults, new_tokens


def traced_for(model: LoadedModel):
    """The nnsight ``TransformersModel`` wrapping ``model.hf`` (wrapping does not modify it)."""
    if "nnsight" not in model.wrappers:
        from nnsight.modeling.transformers import TransformersModel

        model.wrappers["nnsight"] = TransformersModel(model.hf, tokenizer=model.tokenizer)
    return model.wrappers["nnsight"]


def _envoy(traced, model: LoadedModel, block: int, stream: str):
    """The envoy mirroring the module that holds ``stream`` at ``block``."""
    path, where = model.adapter.stream_path(block, stream)
    envoy = traced
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy, where


def _ops(captures, edits):
    """Forward order; at one site edits come first, so a capture there reads the edited stream."""
    ops = [(edit.site.order, "edit", edit.site, EditState(edit)) for edit in edits]
    ops += [(site.order, "capture", site, i) for i, site in enumerate(captures)]
    return sorted(ops, key=lambda op: op[0])


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _run_ops(traced, model, ops, saved):
    """Body shared by trace and generate: capture or edit each site in forward order."""
    for _, kind, site, payload in ops:
        envoy, where = _envoy(traced, model, site.block, site.stream)
        value = envoy.output if where == "output" else envoy.input
        acts = _first(value)
        if kind == "capture":
            saved[payload] = captured(acts, site.positions)
            continue
        new = payload(acts)
        if where == "input":
            envoy.input = new
        elif isinstance(value, tuple):
            envoy.output = (new, *value[1:])
        else:
            envoy.output = new


class NnsightBackend(Backend):
    name = "nnsight"

    def forward(self, model, batch, captures: list[ResolvedSite] = (), edits: list[Edit] = (),
                stop_after_captures: bool = False) -> ForwardOutput:
        traced, batch = traced_for(model), model.on_device(batch)
        ops = _ops(list(captures), list(edits))
        stop = stop_after_captures and bool(captures)
        saved: dict = {}  # filled inside the trace body; lives outside it so it survives
        with torch.inference_mode():
            with traced.trace(**batch) as tracer:
                _run_ops(traced, model, ops, saved)
                if stop:
                    tracer.stop()
                output = traced.output.save()
        values = [saved[i] for i in range(len(captures))]
        if stop:
            return ForwardOutput(None, values)
        cache = output_cache(output) if batch.get("use_cache") else None
        hidden = output.hidden_states[-1] if batch.get("output_hidden_states") else None
        return ForwardOutput(output.logits, values, cache, hidden)

    def generate(self, model, batch, edits: list[Edit] = (), max_new_tokens: int = 20, **kwargs):
        traced, batch = traced_for(model), model.on_device(batch)
        ops = _ops([], list(edits))
        options = generation_defaults(model, max_new_tokens, kwargs)
        every_step = any(edit.every_step for edit in edits)
        with torch.inference_mode(), warnings.catch_warnings():
            # an open iter[:] loop ends when generation does; nnsight warns about that by design
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with traced.generate(**options) as tracer:
                with tracer.invoke(**batch):
                    if every_step:
                        for _ in tracer.iter[:]:
                            _run_ops(traced, model, ops, {})
                    else:
                        _run_ops(traced, model, ops, {})
                with tracer.invoke():
                    ids = tracer.result.save()
        return new_tokens(ids, batch)
