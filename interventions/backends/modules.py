"""Where each stream lives among a transformers decoder's modules."""

from __future__ import annotations

import torch


def decoder_layers(hf) -> torch.nn.ModuleList:
    """The list of decoder blocks (``model.layers`` in Llama, Gemma 3 and Qwen2)."""
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else hf.model
    return decoder.layers


def stream_module(hf, block: int, stream: str) -> tuple[torch.nn.Module, str]:
    """(module, 'input' | 'output') holding the stream at ``block``."""
    layer = decoder_layers(hf)[block]
    return {
        "resid_pre": (layer, "input"),
        "attn_out": (layer.self_attn, "output"),
        "mlp_out": (layer.mlp, "output"),
        "resid_post": (layer, "output"),
    }[stream]
