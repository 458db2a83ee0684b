"""Residual stream at every layer, per-layer norms and the logit lens for one prompt.

Layer labels follow the package convention: ``l`` is the output of block ``l`` (0-based), and
``-1`` is the embedding output (the input of block 0), so a model with L blocks has L + 1 rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..execute import capture
from ..models.loaded import LoadedModel
from ..spec import Site

ROLE = "A"  # capture() wants a role name; inspection only ever uses one model at a time


@dataclass
class Inspection:
    """Everything ``inspect_prompt`` learned about one prompt; row i of each tensor is layer i - 1."""

    facts: dict                     # LoadedModel.facts()
    prompt: str                     # as given
    text: str                       # as fed to the tokenizer (after chat formatting, if any)
    chat: bool
    backend: str
    token_ids: list[int]
    tokens: list[str]               # each token decoded on its own
    residuals: torch.Tensor         # (n_layers + 1, n_pos, d_model)
    norms: torch.Tensor             # (n_layers + 1, n_pos) L2 norm of each residual vector
    top_ids: torch.Tensor           # (n_layers + 1, n_pos, k) logit-lens top-k token ids
    top_probs: torch.Tensor         # (n_layers + 1, n_pos, k) their softmax probabilities
    top_tokens: list[list[list[str]]]  # decoded top_ids, same nesting

    @property
    def model_name(self) -> str:
        return self.facts["name"]

    @property
    def layers(self) -> list[int]:
        return list(range(-1, self.residuals.shape[0] - 1))

    def row(self, layer: int) -> int:
        """Tensor row of a layer label (-1 = embeddings, l = output of block l)."""
        if not -1 <= layer < self.residuals.shape[0] - 1:
            raise IndexError(f"layer {layer} outside -1..{self.residuals.shape[0] - 2}")
        return layer + 1

    def to_dict(self) -> dict:
        """JSON-ready summary (residuals themselves are left out: they are large)."""
        return {
            "model": self.facts, "prompt": self.prompt, "text": self.text, "chat": self.chat,
            "backend": self.backend, "layers": self.layers,
            "layer_convention": "l = output of block l (0-based); -1 = embeddings",
            "token_ids": self.token_ids, "tokens": self.tokens,
            "norms": _rounded(self.norms, 4),
            "logit_lens": {
                "layout": "[layer row][position][rank]; rows follow 'layers'",
                "top_k": self.top_ids.shape[-1],
                "ids": self.top_ids.tolist(),
                "tokens": self.top_tokens,
                "probs": _rounded(self.top_probs, 6),
            },
        }


def _rounded(tensor: torch.Tensor, digits: int):
    return torch.round(tensor.double(), decimals=digits).tolist()


def residual_sites(model: LoadedModel, position="all") -> list[Site]:
    """Embedding output (resid_pre of block 0), then the output of every block."""
    embed = Site(model=ROLE, layer=0, position=position, stream="resid_pre")
    blocks = [Site(model=ROLE, layer=l, position=position) for l in range(model.n_layers)]
    return [embed, *blocks]


def residual_stream(model: LoadedModel, texts: list[str], position="all",
                    backend: str = "torch") -> torch.Tensor:
    """(n_layers + 1, batch, n_pos, d) residuals of already formatted ``texts`` (one left-padded batch)."""
    sites = residual_sites(model, position)
    acts = capture(model, list(texts), sites, backend=backend, stop_early=True)
    return torch.stack([acts[site].float() for site in sites])


def final_norm(model: LoadedModel) -> torch.nn.Module:
    """The norm applied before the unembedding, from the model's family adapter."""
    return model.adapter.norm(model.hf)


@torch.inference_mode()
def lens_logits(model: LoadedModel, resid: torch.Tensor) -> torch.Tensor:
    """Logits the model would output if ``resid`` (..., d) were its last residual stream."""
    hf = model.hf
    weight = hf.get_output_embeddings().weight
    logits = hf.get_output_embeddings()(final_norm(model)(resid.to(weight.dtype)))
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    cap = model.adapter.logit_softcap(config)
    if cap:  # Gemma squashes its logits; the lens must too, or the last layer would not match
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def logit_lens_topk(model: LoadedModel, residuals: torch.Tensor, k: int,
                    max_logits: int = 1 << 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids and probabilities, (..., k), for residuals (..., d).

    All vectors go through the unembedding together (reading its weight once, not once per
    layer), in chunks holding at most ``max_logits`` logits (vocabularies reach 256k tokens).
    """
    flat = residuals.reshape(-1, residuals.shape[-1])
    chunk = max(1, max_logits // model.vocab_size)
    ids, probs = [], []
    for start in range(0, flat.shape[0], chunk):
        p = torch.softmax(lens_logits(model, flat[start:start + chunk]), dim=-1)
        top = torch.topk(p, k=min(k, p.shape[-1]), dim=-1)
        ids.append(top.indices)
        probs.append(top.values)
    shape = (*residuals.shape[:-1], ids[0].shape[-1])
    return torch.cat(ids).reshape(shape), torch.cat(probs).reshape(shape)


def decode_each(tokenizer, ids) -> list[str]:
    """Decode every id on its own (so ' Paris' keeps its leading space)."""
    ids = list(ids)
    unique = sorted(set(ids))
    table = dict(zip(unique, tokenizer.batch_decode([[i] for i in unique])))
    return [table[i] for i in ids]


def inspect_prompt(model: LoadedModel | str, prompt: str, top_k: int = 5, backend: str = "torch",
                   chat: bool = False) -> Inspection:
    """Residuals, norms and logit lens of ``prompt`` at every layer (all positions)."""
    if isinstance(model, str):
        from ..models import load_model
        model = load_model(model)
    text = model.format_prompt(prompt, chat=chat)
    token_ids = model.encode([text])["input_ids"][0].tolist()
    residuals = residual_stream(model, [text], "all", backend)[:, 0]  # one prompt: no padding
    top_ids, top_probs = logit_lens_topk(model, residuals, top_k)
    flat = decode_each(model.tokenizer, top_ids.flatten().tolist())
    n_pos, k = top_ids.shape[1:]
    top_tokens = [[flat[(r * n_pos + p) * k:(r * n_pos + p + 1) * k] for p in range(n_pos)]
                  for r in range(top_ids.shape[0])]
    return Inspection(
        facts=model.facts(), prompt=prompt, text=text, chat=chat, backend=backend,
        token_ids=token_ids, tokens=decode_each(model.tokenizer, token_ids), residuals=residuals,
        norms=torch.linalg.vector_norm(residuals, dim=-1), top_ids=top_ids, top_probs=top_probs,
        top_tokens=top_tokens,
    )
