"""How held-out R² of a fitted map grows with the number of corpus sentences it is fitted on.

Reads the cached corpus activations of two models (computed once by any cross-model run with the
default 3,000 sentences; this script computes them if they are missing, which takes long on a
CPU), holds out the same 300 sentences for every size, and fits the map on the first n of the
other 2,700 with the library's own split, fit and judgement (``FittedKind.fit_and_judge``).

    python examples/corpus_size_r2.py smollm2-135m gemma3-270m --pairs 14:9 9:5 --sizes 250 500 1000 2000 2700
"""

from __future__ import annotations

import argparse

import torch

from interventions import corpus
from interventions.alignment import MAPS
from interventions.alignment.layers import VALIDATION_FRACTION, Layer, Split
from interventions.alignment.states import corpus_activations
from interventions.models import load_model
from interventions.spec.base import Align


def nested_splits(n_total: int, n_heldout: int, sizes: list[int], seed: int) -> dict[int, Split]:
    """One held-out set for every size; each training set is the first n of the rest (so they nest)."""
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    heldout, pool = perm[:n_heldout], perm[n_heldout:]
    splits = {}
    for n in sizes:
        train = pool[:n]
        n_val = max(1, int(n * VALIDATION_FRACTION))
        splits[n] = Split(train=train, heldout=heldout, fit=train[n_val:], val=train[:n_val])
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--pairs", nargs="+", default=["14:9", "9:5"],
                        help="A block:B block pairs; each is fitted both ways")
    parser.add_argument("--sizes", nargs="+", type=int, default=[250, 500, 1000, 2000, 2700])
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--kind", default="linear", help="a fitted map kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    texts = corpus.sentences(3000, args.seed)   # the default corpus, whose activations are cached
    models = {name: load_model(name) for name in (args.model_a, args.model_b)}
    states = {name: corpus_activations(model, texts) for name, model in models.items()}
    splits = nested_splits(len(texts), args.heldout, args.sizes, args.seed)
    kind, align = MAPS.get(args.kind), Align(args.kind, len(texts), args.seed)
    sizes = " | ".join(f"n = {n}" for n in args.sizes)
    print(f"| map ({args.kind}, {args.heldout} held-out sentences) | {sizes} |")
    print("|---|" + "---|" * len(args.sizes))
    for pair in args.pairs:
        a_block, b_block = (int(x) for x in pair.split(":"))
        for (src, k), (dst, j) in (((args.model_a, a_block), (args.model_b, b_block)),
                                   ((args.model_b, b_block), (args.model_a, a_block))):
            cells = []
            for n in args.sizes:
                x = Layer(states[src][:, k], splits[n], f"{src} block {k}")
                y = Layer(states[dst][:, j], splits[n], f"{dst} block {j}")
                cells.append(f"{kind.fit_and_judge(x, y, align).r2_heldout:.3f}")
            print(f"| {src} block {k} → {dst} block {j} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
