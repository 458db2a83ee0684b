"""Batched answering: generation or choice log-likelihood, optionally with a graft in B.

These are the inner loops of every protocol, so they batch items, let transformers'
generate reuse its KV cache, and build one edit per batch rather than per item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends import Backend
from ..combine import get_combine
from ..alignment import graft
from ..models.loaded import LoadedModel
from ..sites import Edit, ResolvedSite, resolve_positions


@dataclass
class Injection:
    """Sender vectors (one per item, already in B's space or to be trailing-combined) for block j."""

    layer: int
    combine: str
    vectors: torch.Tensor          # (n_items, d)
    stream: str = "resid_post"

    def edit(self, positions: torch.Tensor, rows_to_items: torch.Tensor | None = None) -> Edit:
        vectors = self.vectors if rows_to_items is None else self.vectors[rows_to_items]
        combine = get_combine(self.combine)

        return Edit(ResolvedSite(self.layer, self.stream, positions),
                    lambda acts: graft(combine, acts, vectors[:, None, :]))


def sender_vectors(model: LoadedModel, prompts: list[str], layers: list[int], backend: Backend,
                   stream: str = "resid_post") -> tuple[dict[int, torch.Tensor], list[int]]:
    """Last-token activations at each block in ``layers`` in one forward, stopped early,
    and the number of tokens each prompt took."""
    batch = model.encode(prompts)
    last = resolve_positions(-1, batch["attention_mask"])
    sites = [ResolvedSite(layer, stream, last) for layer in layers]
    out = backend.forward(model, batch, captures=sites, stop_after_captures=True)
    vectors = {layer: acts[:, 0] for layer, acts in zip(layers, out.captures)}
    return vectors, batch["attention_mask"].sum(1).tolist()


@dataclass
class Generated:
    texts: list[str]
    prompt_tokens: list[int]
    new_tokens: list[int]


def generate(model: LoadedModel, prompts: list[str], backend: Backend, max_new_tokens: int,
             injection: Injection | None = None) -> Generated:
    batch = model.encode(prompts)
    edits = []
    if injection is not None:
        edits.append(injection.edit(resolve_positions(-1, batch["attention_mask"])))
    ids = backend.generate(model, batch, edits, max_new_tokens)
    return Generated(model.tokenizer.batch_decode(ids, skip_special_tokens=True),
                     batch["attention_mask"].sum(1).tolist(),
                     [_tokens_until_eos(row, model.tokenizer.eos_token_id) for row in ids])


def _tokens_until_eos(row: torch.Tensor, eos: int) -> int:
    hits = (row == eos).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(row)


@dataclass
class ChoiceScores:
    logliks: list[list[float]]     # per item, per choice: summed log-prob of the continuation
    tokens: list[int]              # tokens processed per item (all choices)


@torch.inference_mode()
def choice_logliks(model: LoadedModel, contexts: list[str], choices: list[tuple[str, ...]], backend: Backend,
                   injection: Injection | None = None, items_per_forward: int = 8) -> ChoiceScores:
    """lm-evaluation-harness style: context and " choice" tokenized separately, then joined.

    Each context runs once (with the graft on its last token) and its KV cache is shared
    by all of its choices, instead of re-reading the context once per choice.
    """
    tok = model.tokenizer
    ctx_ids = [tok(c)["input_ids"] for c in contexts]
    cont_ids = [[tok(" " + o, add_special_tokens=False)["input_ids"] for o in opts] for opts in choices]
    logliks: list[list[float]] = []
    tokens: list[int] = []
    for start in range(0, len(contexts), items_per_forward):
        stop = start + items_per_forward
        sums = _chunk_logliks(model, ctx_ids[start:stop], cont_ids[start:stop], backend,
                              injection, torch.arange(start, min(stop, len(contexts))))
        logliks += sums
    for ctx, conts in zip(ctx_ids, cont_ids):
        tokens.append(len(ctx) + sum(len(c) for c in conts))
    return ChoiceScores(logliks, tokens)


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def _chunk_logliks(model, ctx_ids, cont_ids, backend, injection, item_index) -> list[list[float]]:
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    # pass 1: the contexts, grafted on their last token; keep the cache and the last logits
    ids, mask = _left_padded(ctx_ids, pad)
    edits = [] if injection is None else [injection.edit(resolve_positions(-1, mask), item_index)]
    # padding-aware positions (as generate uses), passed explicitly so every backend agrees
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    first = backend.forward(model, {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                    "use_cache": True, "logits_to_keep": 1}, edits=edits)
    first_lp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)
    # pass 2: every choice continues its context's cache (right-padded; pads come after)
    rows = [(i, c) for i, conts in enumerate(cont_ids) for c in conts]
    width = max(len(c) for _, c in rows)
    cont = torch.full((len(rows), width), pad, dtype=torch.long)
    cont_mask = torch.zeros_like(cont)
    for r, (_, c) in enumerate(rows):
        cont[r, :len(c)] = torch.tensor(c)
        cont_mask[r, :len(c)] = 1
    owner = torch.tensor([i for i, _ in rows])
    cache = first.cache
    cache.reorder_cache(owner)
    # no intervention touches the continuations, so they run on the plain model
    cont_positions = mask.sum(1)[owner, None] + torch.arange(width)
    second = model.hf(input_ids=cont, attention_mask=torch.cat([mask[owner], cont_mask], 1),
                      position_ids=cont_positions, past_key_values=cache, use_cache=True)
    later_lp = torch.log_softmax(second.logits[:, :-1].float(), dim=-1)
    out: list[list[float]] = [[] for _ in ctx_ids]
    for r, (i, c) in enumerate(rows):
        total = float(first_lp[i, c[0]])
        if len(c) > 1:
            total += float(later_lp[r, torch.arange(len(c) - 1), torch.tensor(c[1:])].sum())
        out[i].append(total)
    return out
