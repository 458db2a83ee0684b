"""Model-family adapters: where each stream, the embedding and the final norm live, per family.

Every backend, the inspection tools and the soft-token inputs read these entries instead of
sniffing modules. Adding a family is one ``register_family(Family(...))`` entry.

Streams follow TransformerLens: ``resid_pre`` (block input), ``attn_out`` and ``mlp_out`` (what
the sublayer adds to the residual stream: after Gemma's sandwich norms), ``resid_post`` (block
output). ``STREAMS`` lists them in forward order within a block, which nnsight requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InterventionError
from ..registry import Registry

STREAMS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
STREAM_ORDER = {stream: i for i, stream in enumerate(STREAMS)}

# stream -> (module path inside a block, "" = the block itself; read its "input" or "output")
PRE_NORM = {"resid_pre": ("", "input"), "attn_out": ("self_attn", "output"),
            "mlp_out": ("mlp", "output"), "resid_post": ("", "output")}
SANDWICH_NORM = {**PRE_NORM, "attn_out": ("post_attention_layernorm", "output"),
                 "mlp_out": ("post_feedforward_layernorm", "output")}


class UnknownFamilyError(InterventionError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _path(root: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in filter(None, path.split(".")):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


@dataclass(frozen=True)
class Family:
    """How one transformers architecture family lays out its decoder."""

    name: str                                  # config.model_type
    layers: str = "model.layers"               # path of the block list from the CausalLM
    embed: str = "model.embed_tokens"          # input embedding (Gemma's scales inside the module)
    final_norm: str = "model.norm"
    streams: dict = field(default_factory=lambda: dict(PRE_NORM))
    hook: str = "blocks.{block}.hook_{stream}"  # TransformerLens hook point
    softcap: str | None = None                 # config attribute that caps the final logits
    inputs: str = "tokenizer"                  # an INPUTS entry: how prompts become a batch

    def blocks(self, hf) -> torch.nn.ModuleList:
        return _path(hf, self.layers)

    def stream_path(self, block: int, stream: str) -> tuple[str, str]:
        """('model.layers.3.mlp', 'output'): the module path holding ``stream`` and which side."""
        inner, where = self.streams[stream]
        return ".".join(p for p in (self.layers, str(block), inner) if p), where

    def stream_module(self, hf, block: int, stream: str) -> tuple[torch.nn.Module, str]:
        path, where = self.stream_path(block, stream)
        return _path(hf, path), where

    def hook_name(self, block: int, stream: str) -> str:
        return self.hook.format(block=block, stream=stream)

    def embedding(self, hf) -> torch.nn.Module:
        return _path(hf, self.embed)

    def norm(self, hf) -> torch.nn.Module:
        return _path(hf, self.final_norm)

    def logit_softcap(self, config) -> float | None:
        return getattr(config, self.softcap, None) if self.softcap else None


INPUTS: Registry = Registry("input preparation", UnknownFamilyError,
                            "Register one with INPUTS.register(name, fn(model, prompts, add_special_tokens)).")


@INPUTS.register("tokenizer")
def tokenized(model, prompts: list[str], add_special_tokens: bool = True) -> dict:
    """Text through the model's tokenizer, left-padded (an image processor registers beside it)."""
    tok = model.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


FAMILIES: Registry[Family] = Registry(
    "model family", UnknownFamilyError,
    "Add one entry with interventions.register_family(Family(name, layers=..., streams=...)).")


def register_family(family: Family) -> Family:
    return FAMILIES.register(family.name, family)


# qwen2_vl_text / qwen2_5_vl_text: the language models inside Qwen2-VL and Qwen2.5-VL (interventions.vision.vlm)
for _name in ("llama", "qwen2", "qwen3", "mistral", "phi3", "qwen2_vl_text", "qwen2_5_vl_text"):
    register_family(Family(_name))
for _name in ("gemma2", "gemma3_text"):
    register_family(Family(_name, streams=dict(SANDWICH_NORM), softcap="final_logit_softcapping"))
register_family(Family("olmo2", streams=dict(SANDWICH_NORM)))  # post-norm sublayers, no pre-norm


def family_of(name: str) -> Family:
    return FAMILIES.get(name)
