"""Analytic inference FLOPs, following Ramesh & Li 2025 (who follow Kaplan et al. 2020).

Forward FLOPs for one token that attends to ``n_ctx`` tokens:

    2 * N_nonembedding  +  2 * n_layers * n_ctx * d_model  (+ 2 * d_model * vocab for the unembedding)

The unembedding matmul is kept as a separate term because a sender stopped at layer k in
activation communication never computes logits. Attention is causal: the i-th token of a
prompt (1-based) that follows ``past_tokens`` cached tokens attends to ``past_tokens + i`` tokens.
Embedding lookups, norms' elementwise ops and softmax are ignored, as in Kaplan et al.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_model: int
    n_params_nonembedding: int   # all parameters except token/position embeddings and the unembedding
    vocab_size: int

    @classmethod
    def from_hf(cls, hf_model) -> "ModelShape":
        """Shape of a transformers model (or anything with a ``.hf`` attribute, e.g. LoadedModel)."""
        import torch.nn as nn

        model = getattr(hf_model, "hf", hf_model)
        cfg = model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        n_layers = _first_attr(cfg, "num_hidden_layers", "n_layer", "num_layers")
        d_model = _first_attr(cfg, "hidden_size", "n_embd", "d_model")

        # model.parameters() already de-duplicates tied weights, so a tied lm_head is not double counted.
        params = {id(p): p for p in model.parameters()}
        excluded: set[int] = set()
        for mod in model.modules():  # token and learned position embeddings (Kaplan excludes both)
            if isinstance(mod, nn.Embedding):
                excluded.update(id(p) for p in mod.parameters(recurse=False))
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        vocab = getattr(cfg, "vocab_size", None)
        if out is not None:
            excluded.update(id(p) for p in out.parameters(recurse=False))  # counted as the unembed term
            vocab = out.weight.shape[0]
        n_nonemb = sum(p.numel() for pid, p in params.items() if pid not in excluded)
        return cls(int(n_layers), int(d_model), int(n_nonemb), int(vocab))


def _first_attr(obj, *names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    raise AttributeError(f"config has none of {names}")


def _n_blocks(shape: ModelShape, upto_layer: int | None) -> int:
    if upto_layer is None:
        return shape.n_layers
    if not 0 <= upto_layer < shape.n_layers:
        raise ValueError(f"upto_layer {upto_layer} outside 0..{shape.n_layers - 1}")
    return upto_layer + 1


def prefill_flops(shape: ModelShape, n_tokens: int, upto_layer: int | None = None,
                  include_unembed: bool = True, past_tokens: int = 0) -> float:
    """FLOPs of one forward over ``n_tokens`` new tokens (after ``past_tokens`` already in a KV cache).

    ``upto_layer`` (0-based, inclusive) stops after that block: the non-embedding parameters are
    charged pro rata, (upto_layer+1)/n_layers, and attention only for the blocks that ran.
    """
    if n_tokens < 0 or past_tokens < 0:
        raise ValueError("token counts must be >= 0")
    blocks = _n_blocks(shape, upto_layer)
    dense = 2.0 * shape.n_params_nonembedding * blocks / shape.n_layers
    unembed = 2.0 * shape.d_model * shape.vocab_size if include_unembed else 0.0
    # sum over the new tokens of how many tokens each attends to (causal, itself included)
    attended = n_tokens * past_tokens + n_tokens * (n_tokens + 1) / 2
    return n_tokens * (dense + unembed) + 2.0 * blocks * shape.d_model * attended


def decode_flops(shape: ModelShape, prompt_tokens: int, new_tokens: int) -> float:
    """Generating ``new_tokens`` after a prompt, with a KV cache (prompt prefill included).

    The prompt prefill yields the first new token; each later new token is one single-token
    forward attending to everything before it. The last generated token is never fed back.
    """
    total = prefill_flops(shape, prompt_tokens)
    for i in range(1, new_tokens):  # feed generated token i, which sits after prompt + i-1 tokens
        total += prefill_flops(shape, 1, past_tokens=prompt_tokens + i - 1)
    return total


def decode_flops_no_cache(shape: ModelShape, prompt_tokens: int, new_tokens: int) -> float:
    """The same generation without a KV cache: every step re-runs the whole prefix."""
    if new_tokens <= 0:
        return prefill_flops(shape, prompt_tokens)
    return sum(prefill_flops(shape, prompt_tokens + i) for i in range(new_tokens))


@dataclass
class Compute:
    """Per-item cost: tokens processed and analytic FLOPs per model role, measured wall time."""

    tokens: dict[str, int] = field(default_factory=dict)
    flops: float = 0.0
    wall_s: float = 0.0
    role_flops: dict[str, float] = field(default_factory=dict)   # how ``flops`` splits over the roles

    def charge(self, role: str, n: int, flops: float = 0.0) -> None:
        """Count n tokens and their FLOPs to ``role``."""
        self.tokens[role] = self.tokens.get(role, 0) + int(n)
        self.role_flops[role] = self.role_flops.get(role, 0.0) + float(flops)
        self.flops += flops

    def add_prefill(self, role: str, shape: ModelShape, n_tokens: int, upto_layer: int | None = None,
                    include_unembed: bool | None = None) -> float:
        """Charge a forward; by default the unembedding only when the model ran to its last block."""
        if include_unembed is None:
            include_unembed = upto_layer is None or upto_layer == shape.n_layers - 1
        f = prefill_flops(shape, n_tokens, upto_layer=upto_layer, include_unembed=include_unembed)
        self.charge(role, n_tokens, f)
        return f

    def add_generation(self, role: str, shape: ModelShape, prompt_tokens: int, new_tokens: int) -> float:
        """Charge a KV-cached generation; tokens counts prompt + generated tokens."""
        f = decode_flops(shape, prompt_tokens, new_tokens)
        self.charge(role, prompt_tokens + new_tokens, f)
        return f

    @contextmanager
    def timed(self):
        """``with compute.timed(): ...`` adds the block's wall-clock time to wall_s."""
        t0 = time.perf_counter()
        try:
            yield self
        finally:
            self.wall_s += time.perf_counter() - t0

    def merge(self, other: "Compute") -> "Compute":
        """Add ``other`` into this one (in place) and return self, for chaining."""
        for role, n in other.tokens.items():
            self.charge(role, n, other.role_flops.get(role, 0.0))
        self.flops += other.flops - sum(other.role_flops.get(role, 0.0) for role in other.tokens)
        self.wall_s += other.wall_s
        return self

    def charged_again(self, wall_s: float) -> "Compute":
        """The same tokens and FLOPs with another wall time (work reused from an earlier row costs none)."""
        return Compute(dict(self.tokens), self.flops, wall_s, dict(self.role_flops))

    def to_dict(self) -> dict:
        return {"tokens": dict(self.tokens), "flops": float(self.flops), "wall_s": float(self.wall_s),
                "role_flops": dict(self.role_flops)}

    @classmethod
    def from_dict(cls, d: dict) -> "Compute":
        return cls(tokens={k: int(v) for k, v in d.get("tokens", {}).items()},
                   flops=float(d.get("flops", 0.0)), wall_s=float(d.get("wall_s", 0.0)),
                   role_flops={k: float(v) for k, v in d.get("role_flops", {}).items()})
