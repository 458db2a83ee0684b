"""Analytic inference FLOPs, counted two ways; every charge records both.

``flops``: the toolkit's count, Kaplan et al. 2020 style, with a KV cache. Forward FLOPs for one
token that attends to ``n_ctx`` tokens:

    2 * N_nonembedding  +  2 * n_layers * n_ctx * d_model  (+ 2 * d_model * vocab for the unembedding)

The unembedding matmul is kept as a separate term because a sender stopped at layer k in
activation communication never computes logits. Attention is causal: the i-th token of a
prompt (1-based) that follows ``past_tokens`` cached tokens attends to ``past_tokens + i`` tokens.
Embedding lookups, norms' elementwise ops and softmax are ignored, as in Kaplan et al.

``flops_no_cache``: the accounting Ramesh & Li 2025 (§3.2) use for activation communication, which
follows Hoffmann et al. 2022 (Appendix F: embedding and logit matmuls, QKV and output projections,
the full seq x seq score and value products with the softmax, a two-matrix MLP) without a KV cache,
so every generated token re-runs its whole prefix. It reads the width of attention (heads x head
size) and of the MLP from the config; grouped-query attention and gated MLPs are counted as the
formula writes them (full heads, two matrices).
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
    n_heads: int | None = None   # the Hoffmann count's attention width is n_heads * head_dim (d_model if unset)
    head_dim: int | None = None
    d_ff: int | None = None      # MLP width (4 * d_model if unset)

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
        n_heads = _first_attr(cfg, "num_attention_heads", "n_head", "num_heads", default=None)
        head_dim = getattr(cfg, "head_dim", None) or (d_model // n_heads if n_heads else None)
        d_ff = _first_attr(cfg, "intermediate_size", "n_inner", "ffn_dim", "d_ff", default=None)
        return cls(int(n_layers), int(d_model), int(n_nonemb), int(vocab), n_heads, head_dim, d_ff)


_REQUIRED = object()


def _first_attr(obj, *names, default=_REQUIRED):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    if default is _REQUIRED:
        raise AttributeError(f"config has none of {names}")
    return default


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


def hoffmann_forward_flops(shape: ModelShape, seq_len: int, upto_layer: int | None = None,
                           include_unembed: bool = True) -> float:
    """One forward over a whole ``seq_len``-token sequence, by Hoffmann et al. 2022, Appendix F."""
    if seq_len < 0:
        raise ValueError("token counts must be >= 0")
    blocks = _n_blocks(shape, upto_layer)
    heads = shape.n_heads or 1
    attn = heads * (shape.head_dim or shape.d_model // heads)
    d_ff = shape.d_ff or 4 * shape.d_model
    d, seq = shape.d_model, seq_len
    embeddings = 2 * seq * shape.vocab_size * d
    attention = (2 * 3 * seq * d * attn             # key, query and value projections
                 + 2 * seq * seq * attn             # key @ query logits
                 + 3 * heads * seq * seq            # softmax
                 + 2 * seq * seq * attn             # softmax @ value
                 + 2 * seq * attn * d)              # output projection
    dense = 2 * seq * (d * d_ff + d_ff * d)
    logits = 2 * seq * d * shape.vocab_size if include_unembed else 0
    return float(embeddings + blocks * (attention + dense) + logits)


def hoffmann_generation_flops(shape: ModelShape, prompt_tokens: int, new_tokens: int) -> float:
    """Generating ``new_tokens`` without a KV cache: step i re-runs the prompt and the i tokens before it."""
    if new_tokens <= 0:
        return hoffmann_forward_flops(shape, prompt_tokens)
    return sum(hoffmann_forward_flops(shape, prompt_tokens + i) for i in range(new_tokens))


@dataclass
class Compute:
    """Per-item cost: tokens processed and analytic FLOPs per model role (KV-cached, and the paper's
    no-cache count beside it), measured wall time."""

    tokens: dict[str, int] = field(default_factory=dict)
    flops: float = 0.0
    wall_s: float = 0.0
    role_flops: dict[str, float] = field(default_factory=dict)   # how ``flops`` splits over the roles
    flops_no_cache: float = 0.0                                   # Hoffmann et al., no KV cache

    def charge(self, role: str, n: int, flops: float = 0.0, flops_no_cache: float = 0.0) -> None:
        """Count n tokens and their FLOPs (both counts) to ``role``."""
        self.tokens[role] = self.tokens.get(role, 0) + int(n)
        self.role_flops[role] = self.role_flops.get(role, 0.0) + float(flops)
        self.flops += flops
        self.flops_no_cache += flops_no_cache

    def add_prefill(self, role: str, shape: ModelShape, n_tokens: int, upto_layer: int | None = None,
                    include_unembed: bool | None = None) -> float:
        """Charge a forward; by default the unembedding only when the model ran to its last block."""
        if include_unembed is None:
            include_unembed = upto_layer is None or upto_layer == shape.n_layers - 1
        f = prefill_flops(shape, n_tokens, upto_layer=upto_layer, include_unembed=include_unembed)
        self.charge(role, n_tokens, f, hoffmann_forward_flops(shape, n_tokens, upto_layer, include_unembed))
        return f

    def add_generation(self, role: str, shape: ModelShape, prompt_tokens: int, new_tokens: int) -> float:
        """Charge a generation; tokens counts prompt + generated tokens."""
        f = decode_flops(shape, prompt_tokens, new_tokens)
        self.charge(role, prompt_tokens + new_tokens, f, hoffmann_generation_flops(shape, prompt_tokens, new_tokens))
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
        self.flops_no_cache += other.flops_no_cache
        self.wall_s += other.wall_s
        return self

    def charged_again(self, wall_s: float) -> "Compute":
        """The same tokens and FLOPs with another wall time (work reused from an earlier row costs none)."""
        return Compute(dict(self.tokens), self.flops, wall_s, dict(self.role_flops), self.flops_no_cache)

    def to_dict(self) -> dict:
        return {"tokens": dict(self.tokens), "flops": float(self.flops), "wall_s": float(self.wall_s),
                "role_flops": dict(self.role_flops), "flops_no_cache": float(self.flops_no_cache)}

    @classmethod
    def from_dict(cls, d: dict) -> "Compute":
        return cls(tokens={k: int(v) for k, v in d.get("tokens", {}).items()},
                   flops=float(d.get("flops", 0.0)), wall_s=float(d.get("wall_s", 0.0)),
                   role_flops={k: float(v) for k, v in d.get("role_flops", {}).items()},
                   flops_no_cache=float(d.get("flops_no_cache", 0.0)))
