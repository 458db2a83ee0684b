"""Bridging two activation spaces: maps registered by name (``Align(kind=...)`` picks one).

``none`` refuses a width mismatch with an explanation, ``trailing`` applies AC's rule, ``linear``
fits a map. A map kind is a function ``(source, source_layer, target, target_layer, align) -> map``
registered in ``MAPS``; a map is called on (..., d_source) tensors and describes itself.

The linear map is least squares from A's block-k to B's block-j last-token residuals over a
sentence corpus (as in Ramesh & Li, 2025), with a held-out R² so users can judge whether a
graft through it can carry anything. Activations for every block are cached once per
(model weights, corpus), so any (k, j) map is a cheap solve afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import corpus
from .errors import InterventionError, WidthMismatchError
from .models.cache import cache_root
from .models.loaded import LoadedModel
from .registry import Registry


class UnknownMapError(InterventionError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


MAPS: Registry[Callable] = Registry("alignment map", UnknownMapError,
                                    "Register one with @interventions.register_map(name).")


def register_map(name: str):
    return MAPS.register(name)


@dataclass(frozen=True)
class Identity:
    """No map. ``trailing``: a width mismatch is combined on the trailing coordinates (AC's rule)."""

    trailing: bool = False

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return acts

    def describe(self) -> dict:
        return {"kind": "trailing" if self.trailing else "none"}


register_map("none")(lambda source, k, target, j, align: Identity())
register_map("trailing")(lambda source, k, target, j, align: Identity(trailing=True))

HELD_OUT_FRACTION = 0.1


@dataclass
class LinearMap:
    weight: torch.Tensor      # (d_source, d_target)
    bias: torch.Tensor        # (d_target,)
    r2_heldout: float         # 1 - SSE/SST on held-out sentences, pooled over dimensions
    fingerprint: str
    n_train: int
    n_heldout: int
    ridge: float = 0.0        # chosen strength, relative to the mean feature variance

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return acts.to(self.weight.dtype) @ self.weight + self.bias

    def describe(self) -> dict:
        return {"kind": "linear", "fingerprint": self.fingerprint, "r2_heldout": round(self.r2_heldout, 4),
                "n_train": self.n_train, "n_heldout": self.n_heldout, "ridge": self.ridge,
                "shape": list(self.weight.shape)}


@torch.inference_mode()
def corpus_embeddings(model: LoadedModel, texts: list[str]) -> torch.Tensor:
    """Input embedding of each text's last token: (n_texts, d_model). A lookup, no forward."""
    last = [model.tokenizer(t)["input_ids"][-1] for t in texts]
    return model.adapter.embedding(model.hf)(torch.tensor(last)).float()


def corpus_activations(model: LoadedModel, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Last-token residual after every block: (n_texts, n_layers, d_model), cached on disk."""
    path = cache_root() / "activations" / f"{model.name.replace('/', '_')}-{model.weight_sha256[:12]}-{corpus.fingerprint(texts)}.pt"
    if path.exists():
        return torch.load(path)
    from .backends.torch_hooks import TorchHooksBackend
    from .sites import ResolvedSite

    backend = TorchHooksBackend()
    chunks = []
    # sort by length so batches carry little padding; restore the order afterwards
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in tqdm(range(0, len(texts), batch_size), desc=f"corpus activations {model.name}"):
        batch = model.encode([texts[i] for i in order[start:start + batch_size]])
        last = torch.full((batch["input_ids"].shape[0], 1), batch["input_ids"].shape[1] - 1)
        sites = [ResolvedSite(layer, "resid_post", last) for layer in range(model.n_layers)]
        out = backend.forward(model, batch, captures=sites, stop_after_captures=True)
        chunks.append(torch.cat(out.captures, dim=1))
    acts = torch.empty(len(texts), model.n_layers, model.d_model)
    acts[torch.tensor(order)] = torch.cat(chunks)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(acts, path)
    return acts


RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@register_map("linear")
def _linear(source, source_layer, target, target_layer, align) -> LinearMap:
    return fit_linear_map(source, source_layer, target, target_layer, align.n_sentences, align.seed)


def fit_linear_map(source: LoadedModel, source_layer, target: LoadedModel, target_layer,
                   n_sentences: int = 3000, seed: int = 0) -> LinearMap:
    """Least-squares map from source block ``source_layer`` to target block ``target_layer``
    (or to the target's input-embedding space with ``target_layer="embed"``, for soft tokens).

    The ridge strength is picked on a validation slice of the training sentences (plain least
    squares overfits when sentences are few relative to the width); R² is then measured on
    held-out sentences the fit never saw.
    """
    source_layer = source.resolve_layer(source_layer)
    to_embed = target_layer == "embed"
    target_layer = "embed" if to_embed else target.resolve_layer(target_layer)
    texts = corpus.sentences(n_sentences, seed)
    tag = "E" if to_embed else f"L{target_layer}"
    fingerprint = (f"{source.weight_sha256[:12]}-L{source_layer}-to-{target.weight_sha256[:12]}-{tag}"
                   f"-{corpus.fingerprint(texts)}-ridgecv")
    path = cache_root() / "maps" / f"{fingerprint}.pt"
    if path.exists():
        saved = torch.load(path)
        return LinearMap(**saved)
    x = corpus_activations(source, texts)[:, source_layer]
    y = corpus_embeddings(target, texts) if to_embed else corpus_activations(target, texts)[:, target_layer]
    n_heldout = max(1, int(len(texts) * HELD_OUT_FRACTION))
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_heldout], perm[n_heldout:]
    x, y = x.double(), y.double()
    n_val = max(1, len(train) // 10)
    ridge = max(RIDGE_GRID, key=lambda r: _r2(*_ridge_solve(x[train[n_val:]], y[train[n_val:]], r),
                                            x[train[:n_val]], y[train[:n_val]]))
    weight, bias = _ridge_solve(x[train], y[train], ridge)
    r2 = _r2(weight, bias, x[test], y[test])
    fitted = LinearMap(weight.float(), bias.float(), r2, fingerprint, len(train), n_heldout, ridge)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: getattr(fitted, k) for k in ("weight", "bias", "r2_heldout", "fingerprint",
                                                 "n_train", "n_heldout", "ridge")}, path)
    (path.with_suffix(".json")).write_text(json.dumps(fitted.describe(), indent=2))
    return fitted


def _r2(weight, bias, x, y) -> float:
    """Pooled over dimensions: 1 - SSE / SST."""
    pred = x @ weight + bias
    return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def _ridge_solve(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Centered ridge regression; ``ridge`` is relative to the mean feature variance."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    penalty = ridge * gram.diagonal().mean()
    weight = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0], dtype=x.dtype), xc.T @ yc)
    return weight, y_mean - x_mean @ weight


def width_mismatch(d_source: int, d_target: int, what: str = "source") -> WidthMismatchError:
    return WidthMismatchError(
        f"{what} width {d_source} differs from target width {d_target}. Fit a map with "
        "Align(kind='linear') (least squares over a sentence corpus; see fit_linear_map), or "
        "opt into AC's rule of combining only the trailing coordinates with Align(kind='trailing')."
    )


def graft(combine, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``combine(target, source)``, by AC's trailing rule when the widths differ (callers
    have already refused a mismatch the spec did not opt into)."""
    source = source.to(target.device, target.dtype)
    if source.shape[-1] != target.shape[-1]:
        return combine_trailing(combine, target, source)
    return combine(target, source)


def combine_trailing(combine, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """AC's rule for different widths: combine the trailing min(d_s, d_t) coordinates only."""
    width = min(target.shape[-1], source.shape[-1])
    out = target.clone()
    out[..., -width:] = combine(target[..., -width:], source[..., -width:])
    return out
