"""Next-token distributions under temperature, top-k and nucleus (top-p) filtering: what a sampled
row draws from (``Session``'s ``Sampler``) and what a CIPHER message mixes (``EmbeddingMixture``).

Only what is asked for is applied. transformers' ``generate`` also keeps only the 50 most likely
tokens unless a model's generation config says otherwise; here ``top_p=0.9`` alone means the nucleus.
"""

from __future__ import annotations

import torch

NUCLEUS_HEAD = 1024   # the nucleus is almost always among this many tokens: sort those before the whole vocabulary


def filtered(logits: torch.Tensor, temperature: float, top_k: int | None = None,
             top_p: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The distribution of (rows, V) ``logits``: (rows, V) probabilities, or (rows, n) probabilities
    with their token ids when filtering keeps fewer than V (zeros past a row's nucleus). Temperature 0
    (or ``top_k=1``) is the argmax with probability 1."""
    if temperature == 0 or top_k == 1:
        return torch.ones(len(logits), 1, device=logits.device), logits.argmax(-1, keepdim=True)
    scaled = logits / temperature
    ids = None
    if top_k is not None and top_k < scaled.shape[-1]:
        scaled, ids = scaled.topk(top_k, dim=-1)
    probs = torch.softmax(scaled, dim=-1)
    if top_p is None or top_p >= 1:
        return probs, ids
    probs, order = _sorted_head(probs, top_p)
    ids = order if ids is None else ids.gather(-1, order)
    keep = probs.cumsum(-1) - probs < top_p   # the smallest prefix whose mass reaches top_p
    probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs / probs.sum(-1, keepdim=True), ids


def _sorted_head(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The probabilities in descending order with their indices, as far as every row's nucleus needs:
    the top ``NUCLEUS_HEAD`` when they reach ``top_p`` in every row (a full sort of a 262k vocabulary
    costs more than a step of a small model), else all of them."""
    if probs.shape[-1] > NUCLEUS_HEAD:
        head, order = probs.topk(NUCLEUS_HEAD, dim=-1)   # sorted, descending
        if bool((head.sum(-1) >= top_p).all()):
            return head, order
    return probs.sort(dim=-1, descending=True)
