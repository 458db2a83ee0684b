"""Where each stream lives among a transformers decoder's modules."""

from __future__ import annotations

import torch


def decoder_layers(hf) -> torch.nn.ModuleList:
    """The list of decoder blocks (``model.layers`` in Llama, Gemma 3 and Qwen2)."""
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else hf.model
    return decoder.layers


def stream_module(hf, block: int, stream: str) -> tuple[torch.nn.Module, str]:
    """(module, 'input' | 'output') holding the stream at ``block``.

    ``attn_out``/``mlp_out`` follow TransformerLens: what the sublayer adds to the residual
    stream. Gemma 2/3 normalise sublayer outputs ("sandwich" norms) before adding them.
    """
    layer = decoder_layers(hf)[block]
    sandwich = hasattr(layer, "pre_feedforward_layernorm")
    return {
        "resid_pre": (layer, "input"),
        "attn_out": (layer.post_attention_layernorm if sandwich else layer.self_attn, "output"),
        "mlp_out": (layer.post_feedforward_layernorm if sandwich else layer.mlp, "output"),
        "resid_post": (layer, "output"),
    }[stream]
