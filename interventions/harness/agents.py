"""Batched answering: generation or choice log-likelihood, optionally with a graft in B.

These are the inner loops of every protocol, so they batch items, let transformers'
generate reuse its KV cache, and build one edit per batch rather than per item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends import Backend
from ..combine import get_combine
from ..alignment import combine_trailing
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

        def fn(acts: torch.Tensor) -> torch.Tensor:
            source = vectors[:, None, :].to(acts.dtype)
            if source.shape[-1] != acts.shape[-1]:
                return combine_trailing(combine, acts, source)
            return combine(acts, source)

        return Edit(ResolvedSite(self.layer, self.stream, positions), fn)


def sender_vectors(model: LoadedModel, prompts: list[str], layers: list[int], backend: Backend,
                   stream: str = "resid_post") -> dict[int, torch.Tensor]:
    """Last-token activations at each block in ``layers`` in one forward, stopped early."""
    batch = model.encode(prompts)
    last = resolve_positions(-1, batch["attention_mask"])
    sites = [ResolvedSite(layer, stream, last) for layer in layers]
    out = backend.forward(model, batch, captures=sites, stop_after_captures=True)
    return {layer: acts[:, 0] for layer, acts in zip(layers, out.captures)}


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
                   injection: Injection | None = None) -> ChoiceScores:
    """lm-evaluation-harness style: context and " choice" tokenized separately, then joined."""
    tok = model.tokenizer
    rows, row_items, cont_lens = [], [], []
    for item, (context, options) in enumerate(zip(contexts, choices)):
        ctx = tok(context)["input_ids"]
        for option in options:
            cont = tok(" " + option, add_special_tokens=False)["input_ids"]
            rows.append(ctx + cont)
            row_items.append(item)
            cont_lens.append(len(cont))
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    edits = []
    if injection is not None:
        # the graft goes on each row's last context token, just before the choice
        last_ctx = torch.tensor([[width - n - 1] for n in cont_lens])
        edits.append(injection.edit(last_ctx, torch.tensor(row_items)))
    logits = backend.forward(model, {"input_ids": ids, "attention_mask": mask}, edits=edits).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = ids[:, 1:]
    token_lp = logprobs.gather(-1, targets[..., None])[..., 0]
    out: list[list[float]] = [[] for _ in contexts]
    tokens = [0] * len(contexts)
    for i, n in enumerate(cont_lens):
        out[row_items[i]].append(float(token_lp[i, -n:].sum()))
        tokens[row_items[i]] += int(mask[i].sum())
    return ChoiceScores(out, tokens)
