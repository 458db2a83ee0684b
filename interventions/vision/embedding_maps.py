"""Training-free maps from image latents into a language model's input-embedding space (or its residual
stream after a block), fitted on image–caption pairs with the registered map kinds (``linear``: ridge, ``procrustes``, ...).

Each image sends k tokens; its caption, embedded by the language model and cut into k contiguous
segments, gives k targets (each the mean embedding of its segment), so token i of the image is fitted
to the i-th stretch of its description. One map serves every token (rows are (image, token) pairs);
the held-out judgement keeps whole images out of training.
"""

from __future__ import annotations

import torch

from ..alignment import MAPS
from ..alignment.layers import HELD_OUT_FRACTION, VALIDATION_FRACTION, Layer, Split
from ..models.loaded import LoadedModel
from ..spec import Align


@torch.no_grad()
def caption_targets(model: LoadedModel, captions: list[str], tokens: int, block: int | None = None) -> torch.Tensor:
    """(N, tokens, d): each caption's token states, cut into ``tokens`` segments and averaged; the input
    embeddings, or with ``block`` the output of that block (read with the model's special tokens in
    front, as a prompt has them, which are then left out)."""
    out = []
    for text in captions:
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if block is None:
            states = model.embed(ids).float().cpu()
        else:
            full = model.tokenizer(text)["input_ids"]
            hidden = model.hf(input_ids=torch.tensor([full], device=model.device), output_hidden_states=True,
                              use_cache=False).hidden_states[block + 1][0]
            states = hidden[len(full) - len(ids):].float().cpu()
        bounds = torch.linspace(0, len(ids), tokens + 1).round().long().tolist()
        out.append(torch.stack([states[a:max(b, a + 1)].mean(0) for a, b in zip(bounds, bounds[1:])]))
    return torch.stack(out)


def image_split(n_images: int, tokens: int, seed: int) -> Split:
    """Train / held-out (and fit / validation) rows that keep each image's tokens together."""
    perm = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    n_heldout = max(1, int(n_images * HELD_OUT_FRACTION))
    heldout, train = perm[:n_heldout], perm[n_heldout:]
    n_val = max(1, int(len(train) * VALIDATION_FRACTION))
    rows = lambda images: (images[:, None] * tokens + torch.arange(tokens)).flatten()  # noqa: E731
    return Split(train=rows(train), heldout=rows(heldout), fit=rows(train[n_val:]), val=rows(train[:n_val]))


def fit_embedding_map(kind: str, features: torch.Tensor, model: LoadedModel, captions: list[str],
                      what: str, seed: int = 0, block: int | None = None):
    """A map of ``kind`` from (N, k, d_vision) image latents to ``model``'s input embeddings (or, with
    ``block``, its residual stream after that block), judged on held-out images (``describe()`` gives R²
    and cosine)."""
    n, tokens, _ = features.shape
    split = image_split(n, tokens, seed)
    x = Layer(features.reshape(n * tokens, -1), split, what)
    space = "caption embeddings" if block is None else f"caption states after block {block}"
    y = Layer(caption_targets(model, captions, tokens, block).reshape(n * tokens, -1), split, f"{model.name} {space}")
    return MAPS.get(kind).fit_and_judge(x, y, Align(kind, n_sentences=n, seed=seed)).as_float32()
