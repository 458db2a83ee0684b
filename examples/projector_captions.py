"""Can the language model read the projector's soft tokens at all? It captions evaluated scenes from them
(greedy, the prompt it was trained on), and each caption is parsed back into the scene's attributes.

    python examples/projector_captions.py --model smollm2-135m --n 40

Run it after ``interventions run d3_cross_modal`` (the projector is then cached; otherwise it is trained
first, with the experiment's recipe). Prints, per attribute, how often the decoded caption gets it right,
next to the majority-class rate, so a channel that carries content but does not answer questions shows.
"""

from __future__ import annotations

import argparse
import collections

import torch

from interventions.harness.protocols import PROTOCOLS
from interventions.harness.protocols.base import Context
from interventions.harness.protocols.vision import MARKERS
from interventions.harness.tasks import get_task
from interventions.harness.tasks.scenes import CELLS, scene_labels
from interventions.models import load_model
from interventions.session import Session
from interventions.vision import scenes as sc
from interventions.vision.projector import CAPTION_CUE


def parse(caption: str) -> dict:
    """Attribute labels from a caption in the full template ("... a small red circle at the top left; ...")."""
    labels = {f"{cell}:{a}": "none" for cell in CELLS for a in ("shape", "colour", "size")}
    for size, colour, shape, cell in (
            (s, c, h, f"{r} {col}") for s in sc.SIZES for c in sc.COLOURS for h in sc.SHAPES
            for r in sc.ROWS for col in sc.COLUMNS if f"{s} {c} {h} at the {r} {col}" in caption):
        labels.update({f"{cell}:shape": shape, f"{cell}:colour": colour, f"{cell}:size": size})
    return labels


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    model, task = load_model(args.model), get_task("scenes/count")
    items = task.items(args.n)
    ctx = Context(Session({"B": model}), task, pool=items)
    protocol = PROTOCOLS.get("image_latent")(map="projector", train_steps=100, train_batch=8)
    soft = protocol.mapping(ctx)(protocol.item_latents(ctx, items))
    head = model.embed(model.tokenizer(MARKERS[0])["input_ids"])
    cue = model.embed(model.tokenizer(CAPTION_CUE, add_special_tokens=False)["input_ids"])
    hits, majority = collections.Counter(), collections.Counter()
    gold_labels = [scene_labels(task.scene(it)) for it in items]
    for item, vectors, gold in zip(items, soft, gold_labels):
        embeds = torch.cat([head, vectors.to(head.dtype), cue])[None]
        ids = model.hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                max_new_tokens=args.tokens, do_sample=False, pad_token_id=model.pad_token_id)
        caption = model.tokenizer.decode(ids[0], skip_special_tokens=True).split("\n")[0].strip()
        got = parse(caption)
        for key in gold:
            hits[key.split(":")[1]] += got[key] == gold[key]
        hits["count"] += sum(got[f"{c}:shape"] != "none" for c in CELLS) == len(task.scene(item).objects)
        if item is items[0]:
            print(f"gold:    {item.context}\ndecoded: {caption}\n")
    for key in ("shape", "colour", "size"):
        values = [g[k] for g in gold_labels for k in g if k.endswith(key)]
        majority[key] = collections.Counter(values).most_common(1)[0][1] / len(values)
    counts = [len(task.scene(it).objects) for it in items]
    majority["count"] = collections.Counter(counts).most_common(1)[0][1] / len(counts)
    print(f"{args.model}: attributes read back from projector captions of {len(items)} evaluated scenes")
    for key in ("shape", "colour", "size", "count"):
        total = len(items) * (1 if key == "count" else len(CELLS))
        print(f"  {key:<7} {hits[key] / total:.3f}   (majority class {majority[key]:.3f})")


if __name__ == "__main__":
    main()
