"""Benchmarks that print measured ratios (never timed tests)."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from .backends import get_backend
from .program import Program
from .session import Session
from .models import load_model
from .spec import Site, Splice

PROMPT_WORDS = ("The committee reviewed the proposal for the new library in detail and asked the architects "
                "to explain how the reading rooms, the archive and the children's section would share light. ")


def _interleaved_medians(fns: dict, repeats: int, warmup: int = 2, sync=lambda: None) -> dict:
    """Median seconds per function, timed round-robin so drift on a shared machine hits all alike;
    ``sync`` waits for queued device work (CUDA runs asynchronously)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _prompt_of(model, n_tokens: int) -> dict:
    ids = model.tokenizer(PROMPT_WORDS * 8, return_tensors="pt").input_ids[:, :n_tokens]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def bench_overhead(model_name: str = "smollm2-135m", n_tokens: int = 128, repeats: int = 15,
                   backends=("transformer_lens", "nnsight"), cold: bool = True, device: str = "cpu") -> dict:
    """Forward with one splice ÷ plain HF forward, per backend, on ``device``; warm and cold load times."""
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
    model = load_model(model_name, reuse=False, device=device)
    results["warm_load_s"] = time.perf_counter() - start
    batch = model.on_device(_prompt_of(model, n_tokens))
    spec = Splice(source=Site("A", 8), target=Site("B", 8), combine="mean")
    # the splice's edit, compiled once for this batch (A's state is captured here, not timed)
    program = Program(Session(model, "torch"), "B", {"A": [PROMPT_WORDS], "B": [PROMPT_WORDS]})
    program.batch = batch
    edit = program.compile([spec]).edits[0]
    fns = {"plain": lambda: model.hf(**batch)}
    for name in backends:
        fns[name] = lambda backend=get_backend(name): backend.forward(model, batch, edits=[edit])
    with torch.inference_mode():
        medians = _interleaved_medians(fns, repeats, sync=torch.cuda.synchronize if model.device.type == "cuda"
                                       else lambda: None)
    results["plain_hf_forward_s"] = medians["plain"]
    for name in backends:
        results[f"{name}_forward_s"] = medians[name]
        results[f"{name}_overhead_ratio"] = medians[name] / medians["plain"]
    results["n_tokens"] = int(batch["input_ids"].shape[1])
    return results


def _peak_memory_child(model_name: str, backend: str, device: str, n_tokens: int, queue) -> None:
    """In a fresh process: load, run one splice on ``backend``, report peak memory over the weights."""
    import resource
    import sys

    import nnsight  # noqa: F401  the libraries count in the baseline, not in the ratio
    import transformer_lens  # noqa: F401
    from transformers import AutoTokenizer

    from .models.cache import ensure_cached
    from .models.zoo import ZOO

    # so does a tokenizer (its libraries take ~120 MB whatever the model's size): the ratio is
    # what the weights and one splice add
    AutoTokenizer.from_pretrained(ensure_cached(ZOO[model_name])[0] if model_name in ZOO else model_name)

    scale = 1 if sys.platform == "darwin" else 1024    # ru_maxrss: bytes on macOS, KiB on Linux
    peak_rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale  # noqa: E731
    cuda = device.startswith("cuda")
    before = torch.cuda.memory_allocated() if cuda else peak_rss()
    model = load_model(model_name, device=device, reuse=False)
    weights = sum(t.numel() * t.element_size() for t in (*model.hf.parameters(), *model.hf.buffers()))
    spec = Splice(source=Site("A", 8), target=Site("B", 8), combine="mean")
    prompt = model.tokenizer.decode(_prompt_of(model, n_tokens)["input_ids"][0])
    Session(model, backend).forward("B", {"A": [prompt], "B": [prompt]}, [spec])
    after = torch.cuda.max_memory_allocated() if cuda else peak_rss()
    queue.put({"backend": backend, "weights_bytes": weights, "peak_over_baseline_bytes": after - before,
               "ratio": (after - before) / weights})


def bench_memory(model_name: str = "smollm2-135m", device: str = "cpu", n_tokens: int = 128,
                 backends=("torch", "transformer_lens", "nnsight")) -> list[dict]:
    """Peak memory after loading a model and running one splice, ÷ the weights' size, per backend
    (each in its own process, so one backend's memory never counts against another)."""
    import multiprocessing

    load_model(model_name, reuse=False)   # the cache exists before anything is measured
    context = multiprocessing.get_context("spawn")
    results = []
    for backend in backends:
        queue = context.Queue()
        child = context.Process(target=_peak_memory_child, args=(model_name, backend, device, n_tokens, queue))
        child.start()
        results.append(queue.get())
        child.join()
    return results
