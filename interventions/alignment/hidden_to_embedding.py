"""``hidden_to_embedding``: LatentMAS's training-free map from the last hidden state (what the LM
head reads) to input embeddings (Zou et al., 2025, "Latent Collaboration in Multi-Agent Systems").

Read through the vocabulary, a hidden state h scores token t as h·W_out[t]; the map W_a is the ridge
least-squares solution of W_out W_a ≈ W_in, one equation per token:

    W_a = (W_outᵀ W_out + λI)⁻¹ W_outᵀ W_in,     λ = 1e-5 as in the LatentMAS code,

and every mapped vector is rescaled to the mean row norm of W_in, so fed-back thoughts have the
length of an ordinary token embedding. With tied embeddings (W_out = W_in) W_a is close to the
identity and only the rescale remains. W_out may come from one model and W_in from another when the
two share a vocabulary: the map then crosses widths through the tokens. Across vocabularies
(``through="strings"``) the equations are the tokens whose text is one token in both vocabularies,
each source token paired with the target token of the same text. Nothing is fitted on a corpus, so
the map is computed once per (source, target) weights and kept.

As a registered map kind (``Align("hidden_to_embedding")``) it reads the last block's residual and
applies the source's final norm first, since that is what the LM head reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..models.loaded import LoadedModel
from ..errors import InterventionError, VocabularyMismatchError, WidthMismatchError
from .maps import register_map
from .states import input_embedding_table

RIDGE = 1e-5     # absolute, as in the LatentMAS code (W_outᵀW_out has a large diagonal)


class HiddenSiteError(InterventionError, ValueError):
    """The map reads the last block and writes input embeddings, nothing else."""


@dataclass(frozen=True, eq=False)
class HiddenToEmbedding:
    weight: torch.Tensor                       # (d_source, d_target)
    target_norm: float                         # mean row norm of the target's input embeddings
    final_norm: torch.nn.Module | None = None  # applied first when given last-block residuals

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.final_norm is not None:
            with torch.inference_mode():
                hidden = self.final_norm(hidden)
        mapped = hidden.float() @ self.weight
        return mapped * (self.target_norm / torch.linalg.vector_norm(mapped, dim=-1, keepdim=True).clamp_min(1e-6))

    def describe(self) -> dict:
        return {"kind": "hidden_to_embedding", "shape": list(self.weight.shape), "ridge": RIDGE,
                "target_norm": round(self.target_norm, 4), "reads": "last block" if self.final_norm else "hidden"}


def realign_weight(output_weight: torch.Tensor, input_weight: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """(W_outᵀ W_out + λI)⁻¹ W_outᵀ W_in for W_out (V, d_s) and W_in (V, d_t): the V-long products in
    float32 (as LatentMAS; float64 is 3x slower on a CPU), the d×d solve in float64."""
    w_out, w_in = output_weight.float(), input_weight.float()
    gram = (w_out.T @ w_out).double() + ridge * torch.eye(w_out.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, (w_out.T @ w_in).double()).float()


def matched_tokens(source: LoadedModel, target: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of the tokens whose decoded text is a single token in both vocabularies: (source ids, target
    ids), pair by pair. Texts that several ids of one vocabulary decode to are left out."""
    def by_text(model: LoadedModel) -> dict[str, int]:
        rows = model.adapter.embedding(model.hf).weight.shape[0]
        size = min(rows, len(model.tokenizer))
        texts = model.tokenizer.batch_decode([[i] for i in range(size)])
        seen: dict[str, int] = {}
        for i, text in enumerate(texts):
            seen[text] = -1 if text in seen else i      # ambiguous texts are dropped
        return {t: i for t, i in seen.items() if i >= 0 and t.strip()}

    ours, theirs = by_text(source), by_text(target)
    shared = sorted(set(ours) & set(theirs))
    return torch.tensor([ours[t] for t in shared]), torch.tensor([theirs[t] for t in shared])


def check_shared_vocabulary(source: LoadedModel, target: LoadedModel) -> None:
    if not source.shares_vocabulary(target):
        raise VocabularyMismatchError(
            f"hidden_to_embedding maps through the tokens, but {source.name} and {target.name} have different "
            "vocabularies; across families use ac with a fitted map (align: linear), nl_message or nl_debate")


_CACHE: dict = {}


def hidden_to_embedding(source: LoadedModel, target: LoadedModel | None = None,
                        identity: bool = False, through: str = "ids") -> HiddenToEmbedding:
    """The map from ``source``'s last hidden state (after its final norm) to ``target``'s input
    embeddings (``source``'s own by default), computed once per weights. ``identity``: no
    realignment, only the rescale (LatentMAS's ablation; same width only). ``through``: "ids" (one
    shared vocabulary) or "strings" (tokens matched by their text, across vocabularies)."""
    target = target or source
    key = (source.identity, target.identity, identity, through)
    if key not in _CACHE:
        w_in = input_embedding_table(target)
        w_out = source.hf.get_output_embeddings().weight.detach()
        if through == "strings":
            ours, theirs = matched_tokens(source, target)
            w_out, w_in_rows = w_out[ours], w_in[theirs]
        else:
            check_shared_vocabulary(source, target)
            w_in_rows = w_in
        if identity:
            if source.d_model != target.d_model:
                raise WidthMismatchError(f"hidden_to_embedding without realignment needs one width, but "
                                              f"{source.name} has {source.d_model} and {target.name} {target.d_model}")
            weight = torch.eye(source.d_model)
        else:
            weight = realign_weight(w_out, w_in_rows)
        _CACHE[key] = HiddenToEmbedding(weight, float(torch.linalg.vector_norm(w_in, dim=-1).mean()))
    return _CACHE[key]


@register_map("hidden_to_embedding")
def _registered(source: LoadedModel, k, target: LoadedModel, j, align) -> HiddenToEmbedding:
    if j != "embed" or k != source.n_layers - 1:
        raise HiddenSiteError(f"hidden_to_embedding maps {source.name}'s last block (layer -1) into input "
                              f"embeddings (soft tokens); got block {k} to {'embeddings' if j == 'embed' else f'block {j}'}")
    return dataclasses.replace(hidden_to_embedding(source, target), final_norm=source.adapter.norm(source.hf))
