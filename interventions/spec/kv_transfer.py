"""``KVTransfer``: the receiver attends to the sender's key/value cache (KV sharing: KVComm, Shi et
al. 2025; Cache-to-Cache, Fu et al. 2025).

The source role reads its prompt once (the session keeps that cache and charges its forward to every
row that uses it); the target role then runs its own prompt with the cache as ``past_key_values``.

Positions are explicit: the sender's tokens are positions 0..n_s-1 and the receiver's continue at
n_s, n_s+1, ... In a batch the senders are left-padded inside the cache and the receivers inside
their prompts, so a row's combined sequence is [sender pads | sender | receiver pads | receiver]:
every pad, including the ones in the middle, is masked.

Layers: on a chosen layer the receiver attends to the sender's positions; on the others they are
masked for that layer only (a pre-hook on the layer's attention edits the mask it is handed).
``layers`` is "all", a block "start..stop" (both ends included; ints or relative depths, e.g.
"25%..75%"), a list of layers, or "importance" (KVComm's selection, without its depth prior): per
row, the ``n_layers`` layers where the receiver's tokens put the most attention mass on the sender's
positions (averaged over heads and real receiver tokens) while they see all of them, measured by one
extra receiver forward with eager attention, charged to the row. Per row, so a row's layers do not
depend on the other rows of its batch.

Both roles need one architecture (family, layers, key/value heads, head width) and full attention in
every layer: a sliding window counts slots of the padded cache, not tokens, so it is refused.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import InterventionError, SpecFormatError
from .base import SpecKind, check_layer, register_kind

CROSS_FAMILY = ("Across architectures use ac with an align map, nl_message or nl_debate.")


class KVTransferError(InterventionError, ValueError):
    pass


def parse_layer(text: str):
    """One side of a "start..stop" block: an int block, or a relative depth ('50%' or 0.5)."""
    text = text.strip()
    if text.endswith("%"):
        value = text
    else:
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise SpecFormatError(f"kv_transfer.layers: {text!r} in a block is not a layer") from None
    check_layer(value)
    return value


@register_kind("kv_transfer")
@dataclass(frozen=True)
class KVTransfer(SpecKind):
    source: str = "A"                     # the role whose cache is shared (it reads its own prompts)
    target: str = "B"                     # the role that attends to it
    layers: str | tuple = "all"           # "all", "start..stop", a list of layers, or "importance"
    n_layers: int | None = None           # with "importance": layers kept per row

    def __post_init__(self) -> None:
        layers = self.layers
        if isinstance(layers, (list, tuple)):
            for layer in layers:
                check_layer(layer)
            object.__setattr__(self, "layers", tuple(layers))
        elif not isinstance(layers, str) or (layers not in ("all", "importance") and ".." not in layers):
            raise SpecFormatError(f"kv_transfer.layers: expected 'all', 'importance', a block 'start..stop' "
                                  f"(e.g. '2..5' or '25%..75%') or a list of layers, got {layers!r}")
        elif ".." in layers:
            start, stop = layers.split("..", 1)
            parse_layer(start), parse_layer(stop)
        importance = layers == "importance"
        n = self.n_layers
        if importance and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise SpecFormatError(f"kv_transfer.n_layers: layers='importance' needs a whole number of layers "
                                  f"to keep (n_layers >= 0), got {n!r}")
        if not importance and n is not None:
            raise SpecFormatError("kv_transfer.n_layers is only read with layers='importance'")
        if self.source == self.target:
            raise SpecFormatError(f"kv_transfer: source and target are both role {self.source!r}")

    def roles(self) -> set[str]:
        return {self.target}

    def reads(self) -> set[str]:
        return {self.source}

    def chosen(self, model) -> list[int]:
        """The blocks a fixed ``layers`` names, resolved against ``model`` (not for "importance")."""
        if self.layers == "all":
            return list(range(model.n_layers))
        if isinstance(self.layers, tuple):
            return sorted({model.resolve_layer(layer) for layer in self.layers})
        start, stop = (model.resolve_layer(parse_layer(side)) for side in self.layers.split("..", 1))
        if start > stop:
            raise SpecFormatError(f"kv_transfer.layers={self.layers!r}: the block starts at {start}, after "
                                  f"its end {stop}, on {model.name}")
        return list(range(start, stop + 1))

    def compile(self, program) -> None:
        receiver = program.model
        check_pair(program.session.model(self.source), receiver)
        prefix = KVPrefix.stack([(k.to(receiver.device, receiver.dtype), v.to(receiver.device, receiver.dtype))
                                 for k, v in program.kv_message(self.source)])
        n = receiver.n_layers
        if self.layers == "importance":
            if self.n_layers > n:
                raise SpecFormatError(f"kv_transfer.n_layers={self.n_layers}: {receiver.name} has {n} layers")
            scores = attention_on_prefix(program, prefix)
            prefix.importance = scores
            top = scores.topk(self.n_layers, dim=1).indices
            prefix.visible = torch.zeros(program.rows, n, dtype=torch.bool).scatter_(1, top, True)
        else:
            prefix.visible = torch.zeros(program.rows, n, dtype=torch.bool)
            prefix.visible[:, self.chosen(receiver)] = True
        program.set_prefix(prefix)


def attention_config(model):
    config = model.hf.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_pair(source, target) -> None:
    """Refuse what a KV transfer cannot mean: another architecture, sliding windows, an attention
    kernel whose mask it cannot edit."""
    facts = []
    for model in (source, target):
        config = attention_config(model)
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        facts.append((model.family, model.n_layers, heads, head_dim))
    if facts[0] != facts[1]:
        a, b = ({"family": f[0], "layers": f[1], "kv_heads": f[2], "head_dim": f[3]} for f in facts)
        raise KVTransferError(f"kv_transfer needs the same architecture on both sides: {source.name} has {a}, "
                              f"{target.name} has {b}. {CROSS_FAMILY}")
    for model in (source, target):
        config = attention_config(model)
        types = getattr(config, "layer_types", None)
        sliding = any(t != "full_attention" for t in types) if types else bool(getattr(config, "sliding_window", None))
        if sliding:
            raise KVTransferError(f"kv_transfer needs full attention in every layer; {model.name} has sliding-window "
                                  f"layers, whose window counts the padded cache's slots rather than tokens. "
                                  f"{CROSS_FAMILY}")
        kernel = config._attn_implementation
        if kernel not in ("sdpa", "eager"):
            raise KVTransferError(f"kv_transfer masks the sender per layer, which needs sdpa or eager attention; "
                                  f"{model.name} runs {kernel!r}")


@dataclass
class KVPrefix:
    """The sender caches of one request, left-padded to a common length P, and per row which
    layers of the receiver see them."""

    keys: torch.Tensor          # (layers, rows, kv_heads, P, head_dim)
    values: torch.Tensor
    mask: torch.Tensor          # (rows, P): 1 on real sender positions
    visible: torch.Tensor | None = None      # (rows, layers) bool
    importance: torch.Tensor | None = None   # (rows, layers) attention mass, when layers="importance"

    @classmethod
    def stack(cls, caches: list[tuple[torch.Tensor, torch.Tensor]]) -> "KVPrefix":
        """Per row (keys, values), each (layers, kv_heads, n_s, head_dim), left-padded into one prefix."""
        width = max(k.shape[2] for k, _ in caches)
        layers, heads, _, dim = caches[0][0].shape
        keys = caches[0][0].new_zeros(layers, len(caches), heads, width, dim)
        values = torch.zeros_like(keys)
        mask = torch.zeros(len(caches), width, dtype=torch.long)
        for row, (k, v) in enumerate(caches):
            n = k.shape[2]
            keys[:, row, :, width - n:] = k
            values[:, row, :, width - n:] = v
            mask[row, width - n:] = 1
        return cls(keys, values, mask)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    def cache(self, rows: torch.Tensor | None = None):
        """A fresh cache holding the prefix (a forward appends to it, so every request gets its own)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer in range(self.keys.shape[0]):
            k, v = self.keys[layer], self.values[layer]
            if rows is not None:
                k, v = k[rows], v[rows]
            cache.update(k.clone(), v.clone(), layer)
        return cache

    @contextmanager
    def masking(self, model, backend: str, rows: torch.Tensor | None = None):
        """While open, each receiver layer masks the sender's positions for the rows that do not see
        them there (``rows``: which prefix row each batch row is, when a batch repeats rows), in the
        model that ``backend`` runs."""
        hidden = ~self.visible if rows is None else ~self.visible[rows]
        handles = []
        try:
            for hf in running_copies(model, backend):
                kernel = hf.config._attn_implementation
                for layer, attention in enumerate(model.adapter.blocks(hf)):
                    if bool(hidden[:, layer].any()):
                        hook = hide_prefix(hidden[:, layer], self.width, layer, kernel)
                        handles.append(attention.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


def running_copies(model, backend: str) -> list:
    """The transformers models a request may run: the model itself (torch, nnsight, and every plain
    call), and with TransformerLens the shell its bridge runs (the same weights)."""
    if backend != "transformer_lens":
        return [model.hf]
    from ..backends.transformer_lens import bridge_for
    return [model.hf, bridge_for(model)[1]]


def hide_prefix(rows: torch.Tensor, width: int, layer: int, kernel: str):
    """A pre-hook that masks key slots 0..width-1 (the sender's) for ``rows`` of one attention layer."""

    def pre_hook(module, args, kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        batch, queries = hidden_states.shape[:2]
        if mask is None:   # sdpa skips the mask when one new token sees every key: build it
            cache = kwargs.get("cache", kwargs.get("past_key_values"))   # transformers >= 5.25 calls it cache
            past = cache.layers[layer].get_seq_length()
            slots = torch.arange(past + queries, device=hidden_states.device)
            allowed = (slots[None, :] <= past + torch.arange(queries, device=slots.device)[:, None])
            allowed = allowed.expand(batch, 1, queries, past + queries)
            floating = kernel == "eager"
            lowest = torch.finfo(hidden_states.dtype).min
        else:
            floating = mask.dtype != torch.bool
            lowest = torch.finfo(mask.dtype).min if floating else None
            allowed = mask > lowest / 2 if floating else mask
            allowed = allowed.expand(batch, *allowed.shape[1:])
        edited = allowed.clone()
        edited[rows.to(edited.device), :, :, :width] = False
        # a padding query that saw only the sender would see nothing; let it keep its keys (its output is unused)
        empty = ~edited.any(-1, keepdim=True)
        edited = torch.where(empty, allowed, edited)
        if floating:
            dtype = mask.dtype if mask is not None else hidden_states.dtype
            edited = torch.zeros(edited.shape, dtype=dtype, device=edited.device).masked_fill(~edited, lowest)
        return args, {**kwargs, "attention_mask": edited}

    return pre_hook


@contextmanager
def eager_attention(model):
    """Eager attention for one forward (attention weights are only returned by it), restored after."""
    config = model.hf.config
    configs = {id(c): c for c in (config, attention_config(model)) if hasattr(c, "_attn_implementation")}
    before = {key: c._attn_implementation for key, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for key, c in configs.items():
            c._attn_implementation = before[key]


def attention_on_prefix(program, prefix: KVPrefix) -> torch.Tensor:
    """(rows, layers): the attention mass the receiver's real tokens put on the sender's positions,
    averaged over heads and tokens, with every layer seeing the sender. One forward, charged."""
    model = program.model
    mask = program.mask
    start = time.perf_counter()
    prefix.visible = torch.ones(program.rows, model.n_layers, dtype=torch.bool)
    with torch.inference_mode(), eager_attention(model):
        out = model.hf(**model.on_device(program.batch_with(prefix)), output_attentions=True, logits_to_keep=1)
    real = mask.bool()[:, None, :].float().to(model.device)   # (rows, 1, T): real receiver queries
    scores = []
    for weights in out.attentions:                      # (rows, heads, T, P + T)
        on_sender = weights[..., :prefix.width].float().sum(-1)                 # (rows, heads, T)
        scores.append((on_sender * real).sum((1, 2)) / (real.sum((1, 2)) * weights.shape[1]))
    program.charge_forward(time.perf_counter() - start)
    return torch.stack(scores, 1).cpu()
