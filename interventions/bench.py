"""Benchmarks that print measured ratios (never timed tests)."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from .backends import get_backend
from .execute import capture, splice_edit
from .models import load_model
from .spec import Site, Splice

PROMPT_WORDS = ("The committee reviewed the proposal for the new library in detail and asked the architects "
                "to explain how the reading rooms, the archive and the children's section would share light. ")


def _median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _prompt_of(model, n_tokens: int) -> dict:
    ids = model.tokenizer(PROMPT_WORDS * 8, return_tensors="pt").input_ids[:, :n_tokens]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def bench_overhead(model_name: str = "smollm2-135m", n_tokens: int = 128, repeats: int = 15,
                   backends=("transformer_lens", "nnsight"), cold: bool = True) -> dict:
    """Forward with one splice ÷ plain HF forward, per backend; warm and cold load times."""
    results = {}
    if cold:
        import os
        from .models import cache as cache_module
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get(cache_module.CACHE_ENV)
            os.environ[cache_module.CACHE_ENV] = tmp
            start = time.perf_counter()
            load_model(model_name, reuse=False)
            results["cold_load_s"] = time.perf_counter() - start
            if old is None:
                del os.environ[cache_module.CACHE_ENV]
            else:
                os.environ[cache_module.CACHE_ENV] = old
    load_model(model_name, reuse=False)  # make sure the cache exists
    start = time.perf_counter()
    model = load_model(model_name, reuse=False)
    results["warm_load_s"] = time.perf_counter() - start
    torch.set_grad_enabled(False)
    batch = _prompt_of(model, n_tokens)
    spec = Splice(source=Site("A", 8), target=Site("B", 8), combine="mean")
    source = capture(model, PROMPT_WORDS, [spec.source], backend="torch")[spec.source]
    edit = splice_edit(spec, source, model, model, batch["attention_mask"])
    plain = _median_seconds(lambda: model.hf(**batch), repeats)
    results["plain_hf_forward_s"] = plain
    for name in backends:
        backend = get_backend(name)
        spliced = _median_seconds(lambda: backend.forward(model, batch, edits=[edit]), repeats)
        results[f"{name}_forward_s"] = spliced
        results[f"{name}_overhead_ratio"] = spliced / plain
    results["n_tokens"] = int(batch["input_ids"].shape[1])
    return results
