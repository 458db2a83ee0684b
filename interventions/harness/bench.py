"""`interventions bench harness`: the harness's generation throughput against plain batched
HF generate on the same items and batch size, and batched vs item-by-item evaluation."""

from __future__ import annotations

import time

import torch

from ..models import load_model
from ..session import Session
from .prompts import answer_prompt
from .protocols import PROTOCOLS, Context
from .tasks import get_task


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_harness(args) -> dict:
    model = load_model(args.model)
    task = get_task("countries")
    items = task.items(args.items, 0)
    size = args.batch_size
    max_new = 12
    torch.set_grad_enabled(False)
    protocol = PROTOCOLS.get("silent")()

    def harness(batch_size: int):
        ctx = Context(Session(model, "torch"), task, max_new)
        for start in range(0, len(items), batch_size):
            protocol.run(ctx, items[start:start + batch_size])

    def plain_generate():
        prompts = [answer_prompt(model, task, it) for it in items]
        for start in range(0, len(prompts), size):
            batch = model.encode(prompts[start:start + size])
            model.hf.generate(**batch, max_new_tokens=max_new, do_sample=False,
                              pad_token_id=model.tokenizer.pad_token_id)

    harness(size)  # warm-up: first calls pay one-off costs
    # interleave repeats so drift on a shared machine hits both sides alike
    plain_times, harness_times = [], []
    for _ in range(3):
        plain_times.append(_seconds(plain_generate))
        harness_times.append(_seconds(lambda: harness(size)))
    plain_s, harness_s = min(plain_times), min(harness_times)
    one_by_one_s = _seconds(lambda: harness(1))
    ratio = plain_s / harness_s
    print(f"harness throughput ratio {ratio:.2f}")
    print(f"batched runner speed-up over item-by-item {one_by_one_s / harness_s:.2f}x")
    print(f"{len(items)} items, batch size {size}, {max_new} new tokens: plain HF generate {plain_s:.2f} s, "
          f"harness {harness_s:.2f} s, item-by-item {one_by_one_s:.2f} s")
    return {"ratio": ratio, "speedup": one_by_one_s / harness_s}
