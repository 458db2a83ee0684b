"""Every block pair (k, j) of two models at once (``interventions align A B --out DIR``): the
similarity metrics of ``inspection.metrics`` and the held-out R² and mean cosine of every fitted
map kind, so a researcher can pick where to graft before running anything.

States are the cached last-token residuals of the 3000-sentence map corpus; the survey takes its
first ``n`` sentences (a random sample already), so no new forward passes are needed. Map fits
use the same code, split and defaults as ``Align(kind, n_sentences=n, seed=seed)``, on those
sentences; each layer's centring and decompositions are computed once and shared by its pairs.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import corpus
from ..errors import InterventionError
from ..models.loaded import LoadedModel
from .errors import DegenerateFitError
from .fitted import FittedKind
from .layers import Layer, Split
from .maps import MAPS
from .states import corpus_activations

CORPUS_SIZE = 3000
DEFAULT_N = 1000
N_CANDIDATES = 3
LAYER_CONVENTION = "row k = output of block k of model A, column j = output of block j of model B (0-based)"
QUALITIES = {"r2_heldout": "r2", "cosine_heldout": "cosine"}


@dataclass
class Survey:
    models: dict                    # "A"/"B" -> name, sha256, n_layers, d_model
    n: int                          # sentences behind every cell
    seed: int
    corpus: dict                    # which sentences: size, fingerprint, rows used
    scores: dict[str, torch.Tensor]  # score name -> (L_A, L_B); NaN where a fit was refused
    wall_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def filled(self) -> list[str]:
        """The scores with at least one cell (a kind refused on every pair has none)."""
        return [name for name, matrix in self.scores.items() if not matrix.isnan().all()]

    def best(self) -> dict[str, tuple[int, int, float]]:
        """Per filled score: the (k, j) cell with the highest value, and the value."""
        out = {}
        for name in self.filled():
            matrix = self.scores[name]
            values = torch.nan_to_num(matrix.double(), nan=-math.inf)
            k, j = divmod(int(values.argmax()), matrix.shape[1])
            out[name] = (k, j, float(matrix[k, j]))
        return out

    def ranking_scores(self) -> list[str]:
        """The scores candidates are ranked on: the metrics and every map's R². Held-out cosines are
        left out: the residual stream's large shared mean direction keeps them near 1 everywhere."""
        return [name for name in self.filled() if not name.endswith("_cosine")]

    def candidates(self, top: int = N_CANDIDATES) -> list[tuple[int, int, float]]:
        """(k, j, mean rank) of the cells with the best mean rank (1 = best) over ``ranking_scores``."""
        ranks = []
        for name in self.ranking_scores():
            values = torch.nan_to_num(self.scores[name].double().flatten(), nan=-math.inf)
            ranks.append(torch.empty_like(values).scatter_(0, values.argsort(descending=True, stable=True),
                                                           torch.arange(1, len(values) + 1, dtype=values.dtype)))
        mean_rank = torch.stack(ranks).mean(0)
        width = next(iter(self.scores.values())).shape[1]
        return [(int(i) // width, int(i) % width, float(mean_rank[i])) for i in mean_rank.argsort(stable=True)[:top]]

    def to_dict(self) -> dict:
        def plain(matrix):
            return [[None if math.isnan(v) else round(v, 6) for v in row] for row in matrix.double().tolist()]
        return {"models": self.models, "n": self.n, "seed": self.seed, "corpus": self.corpus,
                "layer_convention": LAYER_CONVENTION,
                "scores": {name: plain(matrix) for name, matrix in self.scores.items()},
                "best": {name: {"k": k, "j": j, "value": round(v, 6)} for name, (k, j, v) in self.best().items()},
                "candidates": [{"k": k, "j": j, "mean_rank": round(r, 2)} for k, j, r in self.candidates()],
                "ranked_on": self.ranking_scores(), "wall_s": self.wall_s, "notes": self.notes}

    def summary_lines(self) -> list[str]:
        a, b = self.models["A"], self.models["B"]
        header = (f"A = {a['name']} ({a['n_layers']} blocks x {a['d_model']}), B = {b['name']} "
                  f"({b['n_layers']} blocks x {b['d_model']}); {self.n} corpus sentences, seed {self.seed}; "
                  f"{self.wall_s.get('total', 0):.0f} s")
        lines = [header, "best block pair (k, j) per score (depth = block / last block):"]
        for name, (k, j, value) in self.best().items():
            lines.append(f"  {name:<20} ({k:>2}, {j:>2})  {value:8.4f}   depth {_depth(k, a):.2f} -> {_depth(j, b):.2f}")
        cells = ", ".join(f"({k}, {j})" for k, j, _ in self.candidates())
        lines.append(f"candidates (best mean rank over {', '.join(self.ranking_scores())}): {cells}")
        lines.extend(f"note: {note}" for note in self.notes)
        return lines


def _depth(block: int, model: dict) -> float:
    return block / max(1, model["n_layers"] - 1)


def fitted_kinds() -> list[str]:
    return [name for name, kind in MAPS.items() if isinstance(kind, FittedKind)]


def _facts(model: LoadedModel) -> dict:
    return {"name": model.name, "sha256": model.weight_sha256, "n_layers": model.n_layers, "d_model": model.d_model}


def survey(model_a: LoadedModel, model_b: LoadedModel, n: int = DEFAULT_N, seed: int = 0,
           kinds: list[str] | None = None, progress: bool = True) -> Survey:
    """Metrics and held-out map fits for every block pair of A and B over ``n`` corpus sentences."""
    from ..inspection.metrics import METRICS

    if not 1 <= n <= CORPUS_SIZE:
        raise InterventionError(f"n must be between 1 and {CORPUS_SIZE} (the map corpus), got {n}")
    kinds = fitted_kinds() if kinds is None else list(kinds)
    for kind in kinds:
        if not isinstance(MAPS.get(kind), FittedKind):
            raise InterventionError(f"map kind {kind!r} fits nothing; fitted kinds: {', '.join(fitted_kinds())}")
    start = time.perf_counter()
    texts = corpus.sentences(CORPUS_SIZE, seed)
    acts_a, acts_b = corpus_activations(model_a, texts)[:n], corpus_activations(model_b, texts)[:n]
    result = Survey(models={"A": _facts(model_a), "B": _facts(model_b)}, n=n, seed=seed,
                    corpus={"sentences": CORPUS_SIZE, "fingerprint": corpus.fingerprint(texts),
                            "rows": f"the first {n}"}, scores={})
    wall = result.wall_s
    for name, metric in METRICS.items():
        began = time.perf_counter()
        result.scores[name] = metric(acts_a.transpose(0, 1), acts_b.transpose(0, 1))
        wall[name] = round(time.perf_counter() - began, 2)

    split = Split.of(n, seed)
    layers_a = [Layer(acts_a[:, k], split, f"{model_a.name} block {k}") for k in range(model_a.n_layers)]
    layers_b = [Layer(acts_b[:, j], split, f"{model_b.name} block {j}") for j in range(model_b.n_layers)]
    with single_threaded():
        refused = fit_pairs(result, layers_a, layers_b, kinds, progress)
    for kind, first in refused.items():
        count = int(result.scores[f"{kind}_r2"].isnan().sum())
        result.notes.append(f"{kind}: {count} pairs refused (blank cells), first {first}")
    result.notes.extend(agreeing_kinds(result, kinds))
    wall["total"] = round(time.perf_counter() - start, 1)
    return result


def agreeing_kinds(result: Survey, kinds: list[str], tolerance: float = 0.005) -> list[str]:
    """Notes for two kinds whose held-out R² agree on every fitted pair: one of them adds nothing
    here (e.g. CCA with every component, which predicts all that the ridge map can)."""
    notes = []
    for i, first in enumerate(kinds):
        for second in kinds[i + 1:]:
            gaps = (result.scores[f"{first}_r2"] - result.scores[f"{second}_r2"]).abs()
            gaps = gaps[~gaps.isnan()]
            if len(gaps) and float(gaps.max()) < tolerance:
                notes.append(f"{first} and {second} give the same held-out R² on every pair "
                             f"(largest gap {float(gaps.max()):.4f})")
    return notes


@contextmanager
def single_threaded():
    """One torch thread while fitting: each step is a small decomposition that gains little from a
    second thread, and on shared cores two processes' thread pools spin against each other (on the
    2-core machine under load: 0.6 s per pair with one thread, 2-25 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_pairs(result: Survey, layers_a: list[Layer], layers_b: list[Layer], kinds: list[str],
              progress: bool = True) -> dict[str, str]:
    """Fit and judge every kind on every block pair into ``result.scores`` (and the time spent per
    kind into ``result.wall_s``); returns, per kind, the first refusal's reason."""
    from ..spec.base import Align

    for kind in kinds:
        for quality in QUALITIES.values():
            result.scores[f"{kind}_{quality}"] = torch.full((len(layers_a), len(layers_b)), math.nan)
    spent = dict.fromkeys(kinds, 0.0)
    refused: dict[str, str] = {}
    pairs = [(k, j) for k in range(len(layers_a)) for j in range(len(layers_b))]
    names = f"{result.models['A']['name']} -> {result.models['B']['name']}"
    for k, j in tqdm(pairs, desc=f"fitting maps {names}", disable=not progress):
        for kind in kinds:
            began = time.perf_counter()
            try:
                fitted = MAPS.get(kind).fit_and_judge(layers_a[k], layers_b[j], Align(kind, result.n, result.seed))
            except DegenerateFitError as error:
                refused.setdefault(kind, f"({k}, {j}): {error}")
                continue
            finally:
                spent[kind] += time.perf_counter() - began
            for attribute, quality in QUALITIES.items():
                result.scores[f"{kind}_{quality}"][k, j] = getattr(fitted, attribute)
    result.wall_s.update({kind: round(seconds, 2) for kind, seconds in spent.items()})
    return refused


COLOUR_LABELS = {"cka": "linear CKA", "ac_similarity": "AC similarity ‖YᵀX‖²/(‖X‖²‖Y‖²)",
                 "mutual_knn": "mutual k-NN alignment (k = 10)"}


def write_survey(result: Survey, out_dir) -> dict[str, Path]:
    """align.json and one heatmap PNG per score into ``out_dir``."""
    from ..inspection.plots import plot_layer_pairs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "align.json"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1))
    a, b = result.models["A"]["name"], result.models["B"]["name"]
    for name, matrix in result.scores.items():
        values = matrix.double().numpy()
        low = max(-1.0, float(np.nanmin(values))) if np.isfinite(values).any() else 0.0
        clipped = " (below -1 shown as -1)" if low == -1.0 else ""
        label = COLOUR_LABELS.get(name) or (name.replace("_r2", f" held-out R²{clipped}")
                                            .replace("_cosine", " held-out mean cosine"))
        paths[name] = plot_layer_pairs(values, out / f"{name}.png", f"{label}\n{a} (rows) vs {b} (columns), "
                                       f"{result.n} sentences", label, a, b, vmin=low,
                                       vmax=float(np.nanmax(values)) if np.isfinite(values).any() else 1.0)
    return paths


def align_cli(args) -> None:
    from ..models import load_model

    kinds = args.maps.split(",") if args.maps else None
    result = survey(load_model(args.model_a), load_model(args.model_b), n=args.n, seed=args.seed, kinds=kinds)
    paths = write_survey(result, args.out)
    print("\n".join(result.summary_lines()))
    print(f"wrote {paths['json']} and {len(paths) - 1} heatmaps to {Path(args.out)}")
