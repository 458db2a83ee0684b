"""How alike two layers' representations are: cosine for single vectors, linear CKA for samples.

Linear CKA (Kornblith et al., 2019) compares two sets of n representations of the same inputs,
X (n, d1) and Y (n, d2), so it works across widths and is invariant to rotations and isotropic
scaling of either space:  CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), columns centered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import WidthMismatchError
from ..models.loaded import LoadedModel
from .lens import residual_stream

MIN_CKA_SAMPLES = 3  # with 2 samples the centered data is rank 1 and CKA is always 1


@dataclass
class Similarity:
    matrix: torch.Tensor            # (L1 + 1, L2 + 1); row/column i is layer i - 1
    method: str                     # "cosine" or "linear_cka"
    x: dict                         # what the rows are: model name and prompt(s)
    y: dict                         # what the columns are
    n_samples: int                  # vectors per layer behind each entry (1 for cosine)
    notes: list[str] = field(default_factory=list)

    @property
    def layers_x(self) -> list[int]:
        return list(range(-1, self.matrix.shape[0] - 1))

    @property
    def layers_y(self) -> list[int]:
        return list(range(-1, self.matrix.shape[1] - 1))

    def to_dict(self) -> dict:
        rounded = torch.round(self.matrix.double(), decimals=6).tolist()
        matrix = [[None if v != v else v for v in row] for row in rounded]  # NaN is not JSON
        return {"method": self.method, "x": self.x, "y": self.y, "n_samples": self.n_samples,
                "layers_x": self.layers_x, "layers_y": self.layers_y,
                "layer_convention": "l = output of block l (0-based); -1 = embeddings",
                "matrix": matrix, "notes": self.notes}


def cosine_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(L1, d), (L2, d) -> (L1, L2) cosine similarity of every row pair."""
    if x.shape[-1] != y.shape[-1]:
        raise WidthMismatchError(
            f"cosine similarity needs equal widths, got {x.shape[-1]} and {y.shape[-1]}; pass per-sample "
            "activations (L, n, d) to compare across widths with linear CKA"
        )
    x, y = x.double(), y.double()
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    y = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    return (x @ y.T).float()


def _centered(x: torch.Tensor) -> torch.Tensor:
    x = x.double()  # float64: the HSIC terms are sums of many products
    return x - x.mean(dim=0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of x (n, d1) and y (n, d2) over their n shared samples; NaN if either is constant."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares the same samples: got {x.shape[0]} and {y.shape[0]} rows")
    xc, yc = _centered(x), _centered(y)
    hsic_xy = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    denom = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    return float(hsic_xy / denom)


def _centered_gram(x: torch.Tensor) -> torch.Tensor:
    xc = _centered(x)
    return xc @ xc.T


def cka_matrix(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(L1, n, d1), (L2, n, d2) -> (L1, L2) linear CKA of every layer pair.

    Uses the n x n Gram form, <Kx, Ky>_F / (||Kx||_F ||Ky||_F), which equals ``linear_cka`` but
    costs O(n^2 d) per layer instead of O(n d1 d2) per pair (n prompts << width here).
    """
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"CKA compares the same samples: got {xs.shape[1]} and {ys.shape[1]} per layer")
    grams_x = torch.stack([_centered_gram(x) for x in xs]).flatten(1)
    grams_y = torch.stack([_centered_gram(y) for y in ys]).flatten(1)
    norms = torch.linalg.vector_norm(grams_x, dim=1)[:, None] * torch.linalg.vector_norm(grams_y, dim=1)[None]
    return ((grams_x @ grams_y.T) / norms).float()


def layer_similarity(acts_x: torch.Tensor, acts_y: torch.Tensor) -> torch.Tensor:
    """Layer-by-layer similarity matrix (L1, L2).

    ``(L, d)`` inputs (one vector per layer): cosine similarity, widths must match.
    ``(L, n, d)`` inputs (n samples per layer, e.g. one per prompt): linear CKA over the n samples.
    """
    if acts_x.dim() == 2 and acts_y.dim() == 2:
        return cosine_matrix(acts_x, acts_y)
    if acts_x.dim() == 3 and acts_y.dim() == 3:
        if acts_x.shape[1] < MIN_CKA_SAMPLES:
            raise ValueError(f"linear CKA needs at least {MIN_CKA_SAMPLES} samples per layer, got {acts_x.shape[1]}")
        return cka_matrix(acts_x, acts_y)
    raise ValueError(f"expected two (L, d) or two (L, n, d) tensors, got shapes {tuple(acts_x.shape)} "
                     f"and {tuple(acts_y.shape)}")


def last_token_residuals(model: LoadedModel, prompts: list[str], backend: str = "torch",
                         chat: bool = False) -> torch.Tensor:
    """(n_layers + 1, n_prompts, d) residual of each prompt's last token at every layer."""
    texts = [model.format_prompt(p, chat=chat) for p in prompts]
    return residual_stream(model, texts, position=-1, backend=backend)[:, :, 0]


def compare_prompts(model: LoadedModel, prompt_a: str, prompt_b: str, backend: str = "torch",
                    chat: bool = False) -> Similarity:
    """Cosine similarity of the last-token residuals of two prompts, for every layer pair."""
    acts = last_token_residuals(model, [prompt_a, prompt_b], backend, chat)
    return Similarity(
        matrix=layer_similarity(acts[:, 0], acts[:, 1]), method="cosine",
        x={"model": model.name, "prompt": prompt_a}, y={"model": model.name, "prompt": prompt_b},
        n_samples=1,
    )


def compare_models(model_a: LoadedModel, model_b: LoadedModel, prompts: list[str], backend: str = "torch",
                   chat: bool = False) -> Similarity:
    """Linear CKA between every layer of two models over the last-token residuals of ``prompts``.

    Each model formats and tokenizes the prompts itself. CKA over few samples is biased upwards
    (n points span at most n - 1 centered dimensions): use a few dozen prompts for readable maps.
    """
    prompts = list(prompts)
    acts_a = last_token_residuals(model_a, prompts, backend, chat)
    acts_b = last_token_residuals(model_b, prompts, backend, chat)
    matrix = layer_similarity(acts_a, acts_b)
    notes = []
    if torch.isnan(matrix).any():
        notes.append("NaN (null) entries: a layer whose last-token residual is identical for every "
                     "prompt (e.g. the embedding of a shared final token) has no variance to compare")
    return Similarity(matrix=matrix, method="linear_cka", x={"model": model_a.name, "prompts": prompts},
                      y={"model": model_b.name, "prompts": prompts}, n_samples=len(prompts), notes=notes)
