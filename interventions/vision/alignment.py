"""How alike an image encoder and a language model represent the same things: mutual k-NN alignment
(Huh et al., 2024, "The Platonic Representation Hypothesis") between every encoder layer and every
layer of each language model, on image–caption pairs (``interventions align --encoder ENC LM ...``).

As in the paper: k = 10; features clamped at the 95th percentile of |value| and L2-normalised
(``inspection.metrics``); text states mean-pooled over the caption's tokens, vision states the CLS
token (the mean over positions for encoders without one). Chance is about k / (n - 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..inspection.metrics import CLAMP_QUANTILE, KNN_K, nearest_neighbours, neighbour_overlap
from ..models.loaded import LoadedModel
from .encoders import ImageEncoder

REFERENCE = ("Huh et al. (2024), Fig. 3: on Wikipedia image-caption pairs, mutual k-NN alignment (k = 10) of "
             "language models with DINOv2 rises with the language model's size and capability")


@torch.no_grad()
def caption_states(model: LoadedModel, captions: list[str], batch_size: int = 32) -> list[torch.Tensor]:
    """Per block (i = output of block i, 0-based), (n, d): the mean over each caption's own tokens
    (special tokens and padding left out; right-padded, so positions are as in an unpadded forward)."""
    layers: list[list[torch.Tensor]] = []
    for start in range(0, len(captions), batch_size):
        batch = model.tokenizer(captions[start:start + batch_size], add_special_tokens=False, padding=True,
                                padding_side="right", return_tensors="pt")
        batch = model.on_device(dict(batch))
        hidden = model.hf(**batch, output_hidden_states=True, use_cache=False).hidden_states
        weights = batch["attention_mask"].unsqueeze(-1).float()
        pooled = [(h.float() * weights).sum(1) / weights.sum(1) for h in hidden[1:]]
        for i, p in enumerate(pooled):
            if len(layers) <= i:
                layers.append([])
            layers[i].append(p.cpu())
    return [torch.cat(parts) for parts in layers]


@torch.no_grad()
def image_states(encoder: ImageEncoder, images, batch_size: int = 32) -> list[torch.Tensor]:
    """Per encoder layer (i = output of layer i, 0-based), (n, d): the CLS token, or the mean over positions."""
    states = encoder.hidden_states(images, batch_size)[1:]
    return [h[:, 0] if encoder.has_cls else h.mean(1) for h in states]


def alignment_matrix(xs: list[torch.Tensor], ys: list[torch.Tensor], k: int = KNN_K,
                     quantile: float = CLAMP_QUANTILE) -> torch.Tensor:
    """(len(xs), len(ys)) mutual k-NN alignment; layers may differ in width."""
    knn_y = [nearest_neighbours(y, k, quantile) for y in ys]
    return torch.tensor([[float(neighbour_overlap(nearest_neighbours(x, k, quantile), ky)) for ky in knn_y]
                         for x in xs])


@dataclass
class CrossModalAlignment:
    encoder: str
    n_pairs: int
    k: int
    scores: dict[str, torch.Tensor] = field(default_factory=dict)   # model -> (encoder layers, model layers)
    sizes: dict[str, int] = field(default_factory=dict)             # model -> parameter count

    @property
    def chance(self) -> float:
        return self.k / (self.n_pairs - 1)

    def best(self, model: str) -> tuple[float, int, int]:
        matrix = self.scores[model]
        flat = int(matrix.argmax())
        return float(matrix.max()), flat // matrix.shape[1], flat % matrix.shape[1]

    def summary_lines(self) -> list[str]:
        lines = [f"mutual k-NN alignment (k = {self.k}, {self.n_pairs} image-caption pairs, chance {self.chance:.3f}) "
                 f"of {self.encoder} with:"]
        for model in sorted(self.scores, key=lambda m: self.sizes[m]):
            value, i, j = self.best(model)
            lines.append(f"  {model:<22} {self.sizes[model] / 1e6:7.0f} M params   best {value:.3f} at encoder layer "
                         f"{i}, model layer {j}   (last layers: {float(self.scores[model][-1, -1]):.3f})")
        ordered = [self.best(m)[0] for m in sorted(self.scores, key=lambda m: self.sizes[m])]
        if len(ordered) > 1:
            rising = all(b >= a for a, b in zip(ordered, ordered[1:]))
            lines.append(f"  larger language model aligns more: {'yes' if rising else 'no'} "
                         f"(reference: {REFERENCE})")
        return lines

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "n_pairs": self.n_pairs, "k": self.k, "chance": self.chance,
                "layer_convention": "row i = output of encoder layer i, column j = output of language-model block j "
                                    "(both 0-based)",
                "reference": REFERENCE,
                "models": {m: {"params": self.sizes[m], "best": self.best(m)[0], "best_cell": list(self.best(m)[1:]),
                               "scores": self.scores[m].tolist()} for m in self.scores}}


def cross_modal_alignment(encoder: ImageEncoder, models: list[LoadedModel], images, captions: list[str],
                          k: int = KNN_K) -> CrossModalAlignment:
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions: give one caption per image")
    vision = image_states(encoder, images)
    result = CrossModalAlignment(encoder.name, len(images), k)
    for model in tqdm(models, desc="language models"):
        result.scores[model.name] = alignment_matrix(vision, caption_states(model, captions), k)
        result.sizes[model.name] = sum(p.numel() for p in model.hf.parameters())
    return result


def write_alignment(result: CrossModalAlignment, out_dir) -> dict[str, Path]:
    """alignment.json, one heatmap per language model, and the best alignment against model size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..inspection.plots import plot_layer_pairs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "alignment.json"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1))
    top = max(float(m.max()) for m in result.scores.values())
    for model, matrix in result.scores.items():
        path = out / f"mutual_knn_{result.encoder}_{model.replace('/', '_')}.png"
        paths[model] = plot_layer_pairs(matrix.numpy(), path, f"mutual k-NN (k={result.k}, n={result.n_pairs}): "
                                        f"{result.encoder} x {model}", "mutual k-NN alignment", result.encoder,
                                        model, vmin=result.chance, vmax=top)
    models = sorted(result.scores, key=lambda m: result.sizes[m])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([result.sizes[m] / 1e6 for m in models], [result.best(m)[0] for m in models], "o-")
    for m in models:
        ax.annotate(m, (result.sizes[m] / 1e6, result.best(m)[0]), fontsize=7)
    ax.axhline(result.chance, ls=":", color="grey", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("language model parameters (millions)")
    ax.set_ylabel(f"best mutual k-NN with {result.encoder}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["size"] = out / "alignment_vs_size.png"
    fig.savefig(paths["size"], dpi=120)
    plt.close(fig)
    return paths


def image_caption_pairs(source: str, n: int) -> tuple[list, list[str]]:
    """``n`` (image, full caption) pairs from an image task's fit set: ``scenes`` or ``easy_vqa``."""
    from ..harness.tasks import get_task

    task = get_task({"scenes": "scenes/count", "easy_vqa": "easy_vqa/shape"}.get(source, source))
    examples = task.fit_set(n)
    return [ex.image for ex in examples], [ex.caption for ex in examples]


def align_images_cli(args) -> None:
    from ..models import load_model
    from .encoders import load_encoder

    images, captions = image_caption_pairs(args.pairs, args.n)
    result = cross_modal_alignment(load_encoder(args.encoder), [load_model(m) for m in args.models], images, captions)
    paths = write_alignment(result, args.out)
    print("\n".join(result.summary_lines()))
    print(f"wrote {paths['json']} and {len(paths) - 1} plots to {Path(args.out)}")
