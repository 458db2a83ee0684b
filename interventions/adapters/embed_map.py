"""The training-free channel: a ridge map from A's last-layer hidden states (after the final norm,
which is what a decoding step's hidden state is) to B's input embeddings of the same tokens,
fitted on corpus sentences (each sentence's last token) with the ``linear`` map kind, judged on
held-out sentences and cached by fingerprint like every fitted map (``interventions.alignment``).
"""

from __future__ import annotations

import torch

from .. import corpus
from ..alignment import MAPS, FittedMap, Layer, corpus_activations, corpus_embeddings
from ..alignment.fitted import cached_fit
from ..models.loaded import LoadedModel
from ..spec import Align


@torch.inference_mode()
def final_states(model: LoadedModel, texts: list[str]) -> torch.Tensor:
    """(n, d) last-token hidden state after the final norm: the last block's output, normed."""
    last_block = corpus_activations(model, texts)[:, model.n_layers - 1]
    return model.adapter.norm(model.hf)(last_block).float()


def trajectory_map(sender: LoadedModel, receiver: LoadedModel, n_sentences: int = 3000, seed: int = 0) -> FittedMap:
    """Ridge map A final hidden state -> B input embedding, fitted once per (weights, corpus)."""
    align = Align("linear", n_sentences, seed)
    kind = MAPS.get("linear")
    texts = corpus.sentences(n_sentences, seed)
    key = (f"{sender.tag}-final-to-{receiver.tag}-E-{corpus.fingerprint(texts)}"
           f"-{kind.method(align)}")
    return cached_fit(kind, key, len(texts), lambda split: (
        Layer(final_states(sender, texts), split, f"{sender.name} final hidden state"),
        Layer(corpus_embeddings(receiver, texts), split, f"{receiver.name} input embeddings")), align)
