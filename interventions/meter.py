"""Count what arbitrary code does with a session's models: tokens and analytic FLOPs per forward.

Tracing functions run their own nnsight or TransformerLens code, so the session cannot charge
their requests. Instead a forward pre-hook on each model (and on the TransformerLens bridge's copy)
reads every call's new tokens and cached length and charges them as the session would.
"""

from __future__ import annotations

from contextlib import contextmanager

from .compute import Compute, hoffmann_forward_flops, prefill_flops


def _length(past) -> int:
    if past is None:
        return 0
    return int(past.get_seq_length()) if hasattr(past, "get_seq_length") else int(past[0][0].shape[-2])


@contextmanager
def metered(session):
    """``with metered(session) as total:`` charges every forward of the session's models to ``total``."""
    total = Compute()
    handles = []
    seen = set()
    for role, model in session.models.items():
        shape = session.shape(role)
        targets = [model.hf] + [w[1] for name, w in model.wrappers.items() if name == "transformer_lens"]
        for module in targets:
            if id(module) in seen:  # one model playing two roles is counted once, for the first role
                continue
            seen.add(id(module))

            def hook(_module, args, kwargs, role=role, shape=shape):
                ids = kwargs.get("input_ids", args[0] if args else None)
                embeds = kwargs.get("inputs_embeds")
                rows, new = (ids.shape if ids is not None else embeds.shape[:2])
                past = _length(kwargs.get("cache", kwargs.get("past_key_values")))   # renamed in transformers 5.25
                total.charge(role, rows * new, rows * prefill_flops(shape, new, past_tokens=past),
                             rows * hoffmann_forward_flops(shape, past + new))   # no cache: the prefix again

            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()
