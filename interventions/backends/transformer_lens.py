"""TransformerLens backend: TransformerBridge hook points (``blocks.{l}.hook_resid_post`` …).

The bridge replaces a model's submodules with hooked wrappers in place, so it is booted on a
shell: a copy of the module tree whose parameters and buffers are the zoo model's own tensors.
The weights are held once; the zoo model stays untouched for the other backends.

The bridge wraps every submodule and reimplements attention step by step (eager) so that every
hook point, attention patterns included, can fire. This backend only hooks the residual-stream
sites of ``families.STREAMS``, so it keeps the wrappers that hold those hook points and hands
everything else back to the model's own modules: attention runs the model's implementation (sdpa,
or flash attention where configured; eager alone doubles a forward's cost on a GPU), and norms and
projections stop paying per-call wrapper costs. For pattern or q/k/v hooks, boot a bridge of your
own with ``TransformerBridge.boot_transformers``.
"""

from __future__ import annotations

import contextlib
import copy
import types

import torch

from ..errors import InterventionError
from ..models.families import STREAMS
from ..models.loaded import LoadedModel
from ..sites import Edit, ResolvedSite
from .base import Backend, CaptureState, EditState, ForwardOutput, hooked_forward, hooked_generate


def shared_shell(hf: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``hf``'s modules and config that shares every parameter and buffer with it."""
    memo = {id(t): t for t in (*hf.parameters(), *hf.buffers())}
    return copy.deepcopy(hf, memo)


def _hook_owners(bridge, model: LoadedModel) -> set:
    """The wrappers that directly hold a hook point this backend can use."""
    points = {id(bridge.hook_dict[model.adapter.hook_name(block, stream)])
              for block in range(model.n_layers) for stream in STREAMS}
    return {module for module in bridge.original_model.modules()
            if any(id(child) in points for child in module.children())}


def _unwrap_unhooked(shell: torch.nn.Module, owners: set) -> None:
    """Put the model's own module back wherever a wrapper holds none of the hook points in use."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    for parent in list(shell.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, GeneralizedComponent) and owners.isdisjoint(child.modules()):
                parent._modules[name] = child.original_component


def _delegate_attention(shell: torch.nn.Module, attn_implementation: str) -> None:
    """Let every attention wrapper call the model's own attention (hook_in -> HF -> hook_out)."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    try:
        shell.set_attn_implementation(attn_implementation)
    except (AttributeError, ValueError):   # a model that refuses the switch keeps eager: slower, same numbers
        pass
    for module in shell.modules():
        if isinstance(module, AttentionBridge) and type(module).forward is not AttentionBridge.forward:
            # object.__setattr__: the wrapper forwards ordinary attribute writes to the HF module
            object.__setattr__(module, "forward", types.MethodType(AttentionBridge.forward, module))


class UnsupportedArchitectureError(InterventionError, ValueError):
    pass


def _refuse_unsupported(model: LoadedModel) -> None:
    """A clear error when TransformerLens has no adapter for the model's architecture (its own lists them all)."""
    from importlib.metadata import version

    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    named = list(getattr(model.hf.config, "architectures", None) or [])
    if named and not any(name in SUPPORTED_ARCHITECTURES for name in named):
        raise UnsupportedArchitectureError(f"TransformerLens {version('transformer-lens')} has no bridge for "
                                  f"{', '.join(named)} ({model.name}); run it with backend 'torch' or 'nnsight'")


@contextlib.contextmanager
def _no_processor_fetch():
    """Booting a multimodal bridge fetches the model's processor from the hub by name and, when that fails,
    pip-installs torchvision into the running environment. Inputs reach this backend processed already,
    so the bridge gets no processor."""
    from transformer_lens.model_bridge.sources.transformers import source

    fetch = source.load_modality_processor
    source.load_modality_processor = lambda *args, **kwargs: None
    try:
        yield
    finally:
        source.load_modality_processor = fetch


def bridge_for(model: LoadedModel):
    """The TransformerBridge of ``model`` and the shell it runs (booted once, cached on the model)."""
    if "transformer_lens" not in model.wrappers:
        from transformer_lens.model_bridge import TransformerBridge

        attn_implementation = model.hf.config._attn_implementation
        shell = shared_shell(model.hf)
        try:
            with _no_processor_fetch():
                bridge = TransformerBridge.boot_transformers(model.name, hf_model=shell, tokenizer=model.tokenizer)
        except ValueError:
            _refuse_unsupported(model)
            raise
        _unwrap_unhooked(shell, _hook_owners(bridge, model))
        _delegate_attention(shell, attn_implementation)
        model.wrappers["transformer_lens"] = (bridge, shell)
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
            return hooked_forward(hf, model.on_device(batch), state)

    @torch.inference_mode()
    def generate(self, model, batch, edits: list[Edit] = (), max_new_tokens: int = 20, **kwargs):
        bridge, hf = bridge_for(model)
        with bridge.hooks(fwd_hooks=_hooks(model, None, list(edits))):
            return hooked_generate(model, hf, model.on_device(batch), max_new_tokens, kwargs)
