"""Write inspections and similarities to a directory (JSON + PNG), and the CLI's one-call entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CarrierMissingError
from ..models import load_model
from .lens import Inspection, inspect_prompt
from .plots import plot_logit_lens, plot_norms, plot_similarity
from .similarity import Similarity, compare_models, compare_prompts

N_PROBE_PROMPTS = 48
# Used when the sentence corpus package is not installed; CKA needs varied inputs.
FALLBACK_PROBES = [
    "The capital of France is", "Water boils at a temperature of", "def fibonacci(n):",
    "Once upon a time, there was a", "The stock market fell sharply after", "2 + 2 =",
    "My favourite colour is", "The mitochondria is the", "In 1969, astronauts landed on the",
    "Translate to French: good morning", "The quick brown fox jumps over the", "Dear Sir or Madam,",
    "The largest planet in our solar system is", "She opened the door and saw", "import numpy as",
    "The recipe calls for two cups of",
]


def _write_json(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    return path


def write_similarity(similarity: Similarity, out_dir) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"similarity_json": _write_json(similarity.to_dict(), out / "similarity.json"),
            "similarity_png": plot_similarity(similarity, out / "similarity.png")}


def write_inspection(inspection: Inspection, out_dir, similarity: Similarity | None = None,
                     save_residuals: bool = True) -> dict[str, Path]:
    """inspection.json, norms.png, logit_lens.png (+ residuals.npy, + similarity.json/png)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = inspection.to_dict()
    paths = {"inspection_json": out / "inspection.json"}
    if save_residuals:  # full vectors are too big for JSON; .npy keeps them exact
        paths["residuals_npy"] = out / "residuals.npy"
        np.save(paths["residuals_npy"], inspection.residuals.numpy())
        data["residuals_file"] = {"path": "residuals.npy", "shape": list(inspection.residuals.shape),
                                  "layout": "[layer row][position][d_model]; rows follow 'layers'"}
    _write_json(data, paths["inspection_json"])
    paths["norms_png"] = plot_norms(inspection, out / "norms.png")
    paths["logit_lens_png"] = plot_logit_lens(inspection, out / "logit_lens.png")
    if similarity is not None:
        paths.update(write_similarity(similarity, out))
    return paths


def probe_prompts(n: int = N_PROBE_PROMPTS) -> list[str]:
    """Varied real sentences for cross-model CKA (the package corpus, or a built-in list)."""
    from .. import corpus
    try:
        sentences = corpus.sentences(n, seed=0)
    except CarrierMissingError:
        return list(FALLBACK_PROBES)
    # cut each sentence to a prefix: whole sentences nearly all end in ".", which would make the
    # last-token residuals of early layers identical and their CKA meaningless
    return [" ".join(s.split()[:max(3, 2 * len(s.split()) // 3)]) for s in sentences]


def lens_settles_at(inspection: Inspection, position: int = -1) -> int:
    """First layer from which the logit-lens top-1 stays equal to the final prediction."""
    top1 = inspection.top_ids[:, position, 0]
    row = len(top1) - 1
    while row > 0 and top1[row - 1] == top1[-1]:
        row -= 1
    return inspection.layers[row]


def headline(inspection: Inspection) -> dict:
    norms = inspection.norms
    row, pos = divmod(int(norms.argmax()), norms.shape[1])
    return {
        "next_token": {"token": inspection.top_tokens[-1][-1][0],
                       "prob": round(float(inspection.top_probs[-1, -1, 0]), 6)},
        "lens_settles_at_layer": lens_settles_at(inspection),
        "max_norm": {"layer": inspection.layers[row], "position": pos, "token": inspection.tokens[pos],
                     "value": round(float(norms[row, pos]), 4)},
        "last_layer_mean_norm": round(float(norms[-1].mean()), 4),
    }


def similarity_headline(similarity: Similarity) -> dict:
    matrix = similarity.matrix
    summary = {"method": similarity.method, "shape": list(matrix.shape), "n_samples": similarity.n_samples}
    if matrix.shape[0] == matrix.shape[1]:
        summary["mean_diagonal"] = round(float(matrix.diagonal().nanmean()), 6)
    return summary


def inspect_to_dir(model_name: str, prompt: str, out_dir, compare_prompt: str | None = None,
                   compare_model: str | None = None, top_k: int = 5, backend: str = "torch",
                   chat: bool = False) -> dict:
    """Inspect ``prompt`` on ``model_name`` and write the results to ``out_dir``; returns a summary.

    With ``compare_prompt``: cosine similarity between the layers of the two prompts (same model).
    With ``compare_model``: linear CKA between the layers of the two models, over the last-token
    residuals of ``prompt`` plus a fixed set of probe sentences.
    """
    if compare_prompt is not None and compare_model is not None:
        raise ValueError("give compare_prompt or compare_model, not both")
    model = load_model(model_name)
    inspection = inspect_prompt(model, prompt, top_k=top_k, backend=backend, chat=chat)
    similarity = None
    if compare_prompt is not None:
        similarity = compare_prompts(model, prompt, compare_prompt, backend=backend, chat=chat)
    elif compare_model is not None:
        prompts = [prompt, *[p for p in probe_prompts() if p != prompt]]
        similarity = compare_models(model, load_model(compare_model), prompts, backend=backend, chat=chat)
    paths = write_inspection(inspection, out_dir, similarity)
    summary = {"model": model.name, "prompt": prompt, "out_dir": str(Path(out_dir)),
               "n_tokens": len(inspection.tokens), "n_layers": model.n_layers,
               "files": {name: str(path) for name, path in paths.items()}, **headline(inspection)}
    if similarity is not None:
        summary["similarity"] = similarity_headline(similarity)
    return summary
