"""A loaded model plus the facts interventions need about it."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import LayerOutOfRangeError


@dataclass(eq=False)
class LoadedModel:
    name: str
    hf: Any                 # transformers PreTrainedModel, never modified in place
    tokenizer: Any
    family: str             # config.model_type, e.g. "llama", "gemma3_text", "qwen2"
    n_layers: int
    d_model: int
    vocab_size: int
    weight_sha256: str
    source: str             # where the weights came from
    loaded_sha256: str | None = None  # hash of the files actually loaded (verified cache); None: weight_sha256
    placement_note: str | None = None  # a device/dtype fallback taken at load (recorded in rows)
    wrappers: dict = field(default_factory=dict, repr=False)  # per-backend cached wrappers

    @property
    def adapter(self):
        """The family adapter: where streams, embedding and final norm live (models/families.py)."""
        from .families import family_of
        return family_of(self.family)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (with ``device="auto"`` the first of several)."""
        return self.adapter.embedding(self.hf).weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.embedding(self.hf).weight.dtype

    @property
    def dtype_name(self) -> str:
        from .placement import DTYPE_NAMES
        return DTYPE_NAMES.get(self.dtype, str(self.dtype).removeprefix("torch."))

    @property
    def identity(self) -> str:
        """The weights a result depends on: their hash, and the precision when it is not fp32."""
        from .placement import weights_identity
        return weights_identity(self.weight_sha256, self.dtype_name)

    @property
    def tag(self) -> str:
        """A short name of ``identity`` for cache files: 12 hex digits, and the precision when not fp32."""
        return self.weight_sha256[:12] + ("" if self.dtype_name == "fp32" else f"-{self.dtype_name}")

    def embed(self, ids) -> torch.Tensor:
        """Input embeddings of token ids (a tensor or a list), on the model's device and in its dtype."""
        return self.adapter.embedding(self.hf)(torch.as_tensor(ids, dtype=torch.long, device=self.device))

    def on_device(self, batch: dict) -> dict:
        """``batch`` with every tensor moved to the model's device (caches and flags as they are), the
        KV cache under the name this transformers release's forward takes."""
        moved = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if "past_key_values" in moved:
            moved[cache_keyword(type(self.hf))] = moved.pop("past_key_values")
        return moved

    @property
    def max_positions(self) -> int | None:
        config = self.hf.config.get_text_config() if hasattr(self.hf.config, "get_text_config") else self.hf.config
        return getattr(config, "max_position_embeddings", None)

    @property
    def pad_token_id(self) -> int:
        """The id that pads batches and finished rows: the tokenizer's pad token, else end-of-sequence."""
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def shares_vocabulary(self, other: "LoadedModel") -> bool:
        """Same tokens with the same ids, and as many embedding rows: a distribution over one
        model's vocabulary means the same to the other."""
        if self.weight_sha256 == other.weight_sha256:
            return True
        rows = (self.adapter.embedding(self.hf).weight.shape[0], other.adapter.embedding(other.hf).weight.shape[0])
        return rows[0] == rows[1] and self.tokenizer.get_vocab() == other.tokenizer.get_vocab()

    def facts(self) -> dict:
        return {"name": self.name, "family": self.family, "n_layers": self.n_layers,
                "d_model": self.d_model, "vocab_size": self.vocab_size,
                "chat_template": self.has_chat_template, "weight_sha256": self.weight_sha256,
                "source": self.source, "device": str(self.device), "dtype": self.dtype_name}

    def resolve_layer(self, layer: int | float | str) -> int:
        """Block index for an int (negative counts from the end) or a relative depth: a float in
        [0, 1] or a string like "50%"."""
        n = self.n_layers
        valid = (f"valid: 0..{n - 1} (output of block l, 0-based), -{n}..-1 counting from the end, "
                 "or a relative depth 0.0..1.0 ('0%'..'100%')")
        if isinstance(layer, str) and layer.endswith("%"):
            try:
                layer = float(layer[:-1]) / 100
            except ValueError:
                raise LayerOutOfRangeError(f"layer {layer!r} is not a percentage; {valid}") from None
        if isinstance(layer, bool):
            raise LayerOutOfRangeError(f"layer must be an int or a float depth, got {layer!r}; {valid}")
        if isinstance(layer, float):
            if not 0.0 <= layer <= 1.0:
                raise LayerOutOfRangeError(f"relative depth {layer} outside 0.0..1.0 for {self.name}; {valid}")
            return round(layer * (n - 1))
        if not -n <= layer < n:
            raise LayerOutOfRangeError(f"layer {layer} out of range for {self.name} ({n} blocks); {valid}")
        return layer % n

    def format_prompt(self, text: str, chat: bool | None = None) -> str:
        """Wrap ``text`` as one user turn when the model has a chat template (and chat is not False)."""
        use_chat = self.has_chat_template if chat is None else chat
        if not use_chat:
            return text
        messages = [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, prompts: list[str] | str, add_special_tokens: bool = True) -> dict:
        """Left-padded batch, so position -1 is every row's last real token, prepared as the
        model's family says (``Family.inputs``: the tokenizer for text models)."""
        from .families import INPUTS

        return INPUTS.get(self.adapter.inputs)(self, [prompts] if isinstance(prompts, str) else list(prompts),
                                               add_special_tokens)


@functools.cache
def cache_keyword(model_class: type) -> str:
    """transformers 5.25 renamed a forward's ``past_key_values`` to ``cache`` (the old name still
    works, with a deprecation warning on every call); earlier 5.x releases take only the old name."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned, read by this release's name (reading ``past_key_values``
    from a 5.25 output logs a deprecation warning)."""
    return out.cache if hasattr(out, "cache") else out.past_key_values
