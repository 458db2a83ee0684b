"""PNG heatmaps of an Inspection or a Similarity (matplotlib, headless Agg backend)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .lens import Inspection  # noqa: E402
from .similarity import Similarity  # noqa: E402

LAYER_LABEL = "layer (output of block l; -1 = embeddings)"
MAX_TICK_LABELS = 48      # beyond this, token labels on an axis become unreadable
MAX_ANNOTATED_CELLS = 24 * 40  # annotate top-1 tokens only on grids this small


def label(text: str, width: int = 10) -> str:
    """A token or prompt made safe for a plot label: escapes, no mathtext, truncated."""
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")
    return text if len(text) <= width else text[:width - 1] + "…"


def _title(what: str, model: str, prompt: str) -> str:
    return f"{what} — {model}\nprompt: {label(repr(prompt), 70)}"


def _layer_ticks(ax, axis: str, layers: list[int]) -> None:
    most = 32 if axis == "y" else 16  # horizontal labels need more room each
    ticks = list(range(0, len(layers), max(1, -(-len(layers) // most))))
    getattr(ax, f"set_{axis}ticks")(ticks)
    getattr(ax, f"set_{axis}ticklabels")([str(layers[t]) for t in ticks])


def _position_ticks(ax, tokens: list[str]) -> None:
    if len(tokens) <= MAX_TICK_LABELS:
        ax.set_xticks(range(len(tokens)))
        ax.set_xticklabels([f"{i}:{label(t)}" for i, t in enumerate(tokens)], rotation=90, fontsize=7)
    ax.set_xlabel("position")


def _figure(n_cols: int, n_rows: int):
    width = min(24.0, 3.0 + 0.55 * n_cols)
    height = min(24.0, 2.5 + 0.28 * n_rows)
    return plt.subplots(figsize=(width, height))


def _save(fig, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Glyph.*missing.*")  # CJK/emoji tokens
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_norms(inspection: Inspection, path: Path) -> Path:
    norms = inspection.norms.numpy()
    fig, ax = _figure(norms.shape[1], norms.shape[0])
    # log colours: the first token's norm is often orders of magnitude above the rest
    scale = LogNorm(vmin=norms.min(), vmax=norms.max()) if norms.min() > 0 else None
    image = ax.imshow(norms, aspect="auto", origin="lower", cmap="viridis", norm=scale,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, label="L2 norm of the residual")
    _layer_ticks(ax, "y", inspection.layers)
    ax.set_ylabel(LAYER_LABEL)
    _position_ticks(ax, inspection.tokens)
    ax.set_title(_title("residual stream norm", inspection.model_name, inspection.prompt), fontsize=9)
    return _save(fig, path)


def plot_logit_lens(inspection: Inspection, path: Path) -> Path:
    probs = inspection.top_probs[..., 0].numpy()
    fig, ax = _figure(probs.shape[1], probs.shape[0])
    image = ax.imshow(probs, aspect="auto", origin="lower", cmap="magma", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, label="logit-lens top-1 probability")
    if probs.size <= MAX_ANNOTATED_CELLS:
        for row, tops in enumerate(inspection.top_tokens):
            for pos, ranked in enumerate(tops):
                ax.text(pos, row, label(ranked[0], 8), ha="center", va="center", fontsize=6,
                        color="white" if probs[row, pos] < 0.5 else "black")
    _layer_ticks(ax, "y", inspection.layers)
    ax.set_ylabel(LAYER_LABEL)
    _position_ticks(ax, inspection.tokens)
    ax.set_title(_title("logit lens (final norm + unembedding), top-1", inspection.model_name,
                        inspection.prompt), fontsize=9)
    return _save(fig, path)


def _side(info: dict) -> str:
    if "prompt" in info:
        return f"{info['model']}: {label(repr(info['prompt']), 40)}"
    return f"{info['model']} ({len(info['prompts'])} prompts)"


def plot_similarity(similarity: Similarity, path: Path) -> Path:
    matrix = np.ma.masked_invalid(similarity.matrix.numpy())  # NaN cells stay blank
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    low = -1.0 if similarity.method == "cosine" else 0.0
    image = ax.imshow(matrix, aspect="auto", origin="lower", cmap="viridis", vmin=low, vmax=1.0,
                      interpolation="nearest")
    what = "cosine similarity (last token)" if similarity.method == "cosine" else "linear CKA (last tokens)"
    fig.colorbar(image, ax=ax, label=what)
    _layer_ticks(ax, "y", similarity.layers_x)
    _layer_ticks(ax, "x", similarity.layers_y)
    ax.set_ylabel(f"{similarity.x['model']} {LAYER_LABEL}", fontsize=8)
    ax.set_xlabel(f"{similarity.y['model']} {LAYER_LABEL}", fontsize=8)
    ax.set_title(f"{what}\nrows {_side(similarity.x)}\ncolumns {_side(similarity.y)}", fontsize=8)
    return _save(fig, path)


def plot_layer_pairs(matrix, path: Path, title: str, colour_label: str, rows_model: str, columns_model: str,
                     vmin: float = 0.0, vmax: float = 1.0) -> Path:
    """Heatmap of a (L1, L2) score over block pairs (row k = output of block k of the rows' model);
    values outside [vmin, vmax] take the end colours, NaN cells stay blank. The best cell is marked."""
    values = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", origin="lower", cmap="viridis",
                      vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, label=colour_label)
    if np.isfinite(values).any():
        best_row, best_column = np.unravel_index(np.nanargmax(values), values.shape)
        ax.plot(best_column, best_row, marker="s", markersize=9, markerfacecolor="none", color="red")
    _layer_ticks(ax, "y", list(range(values.shape[0])))
    _layer_ticks(ax, "x", list(range(values.shape[1])))
    ax.set_ylabel(f"{rows_model} block (output of block k, 0-based)", fontsize=8)
    ax.set_xlabel(f"{columns_model} block (output of block j, 0-based)", fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
