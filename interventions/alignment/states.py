"""Corpus states that maps are fitted on: each sentence's last-token residual after every block
(cached on disk once per model weights and corpus), or its last token's input embedding."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .. import corpus
from ..models.cache import cache_root
from ..models.loaded import LoadedModel
from ..verified import load_tensors, save_tensors


@torch.inference_mode()
def input_embedding_table(model: LoadedModel) -> torch.Tensor:
    """(vocab, d) every token's input embedding as ``inputs_embeds`` expects it: the embedding
    module's output, so a scale inside it (Gemma's √d) is included."""
    return model.embed(torch.arange(model.adapter.embedding(model.hf).weight.shape[0])).float().cpu()


@torch.no_grad()
def corpus_embeddings(model: LoadedModel, texts: list[str]) -> torch.Tensor:
    """Input embedding of each text's last token: (n_texts, d_model). A lookup, no forward."""
    last = [model.tokenizer(t)["input_ids"][-1] for t in texts]
    return model.embed(last).float().cpu()


def corpus_activations(model: LoadedModel, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Last-token residual after every block: (n_texts, n_layers, d_model), cached on disk."""
    path = cache_root() / "activations" / f"{model.name.replace('/', '_')}-{model.tag}-{corpus.fingerprint(texts)}.pt"
    cached = load_tensors(path, "cached activations")
    if cached is not None:
        return cached
    from ..backends.torch_hooks import TorchHooksBackend
    from ..sites import ResolvedSite

    backend = TorchHooksBackend()
    chunks = []
    # sort by length so batches carry little padding; restore the order afterwards
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    # a one-time cost per (model, corpus) that can take many minutes on a CPU: show sentences and an ETA
    with tqdm(total=len(texts), unit="sentence", desc=f"corpus activations of {model.name} (once; then cached)",
              smoothing=0.1) as bar:
        for start in range(0, len(texts), batch_size):
            batch = model.encode([texts[i] for i in order[start:start + batch_size]])
            last = torch.full((batch["input_ids"].shape[0], 1), batch["input_ids"].shape[1] - 1)
            sites = [ResolvedSite(layer, "resid_post", last) for layer in range(model.n_layers)]
            out = backend.forward(model, batch, captures=sites, stop_after_captures=True)
            chunks.append(torch.cat(out.captures, dim=1).cpu())
            bar.update(batch["input_ids"].shape[0])
    acts = torch.empty(len(texts), model.n_layers, model.d_model)
    acts[torch.tensor(order)] = torch.cat(chunks)
    save_tensors(acts, path)
    return acts


def paired_states(source: LoadedModel, source_layer: int, target: LoadedModel, target_layer,
                  texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d_source) states of source block ``source_layer`` and (n, d_target) states of target
    block ``target_layer`` (or its input embeddings, ``"embed"``) for the same texts."""
    x = corpus_activations(source, texts)[:, source_layer]
    if target_layer == "embed":
        return x, corpus_embeddings(target, texts)
    return x, corpus_activations(target, texts)[:, target_layer]
