"""`interventions bench harness`: the harness's generation throughput against plain batched
HF generate on the same items and batch size, and batched vs item-by-item evaluation; `bench
cipher`, `bench cascade` and `bench sampling` time one channel or path against its plain reference;
`bench precision` times sampled decoding in bf16 against fp32. `bench harness` also times a real
task's items batched by length against batched in task order."""

from __future__ import annotations

import time

import torch
from transformers import StoppingCriteriaList

from ..models import load_model
from ..session import Session, forget_leads
from ..stops import StopOnText
from .prompts import answer_prompt, prompt_size
from .protocols import PROTOCOLS, Context
from .tasks import get_task


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _best_interleaved(reference, measured, repeats: int) -> tuple[float, float]:
    """The best of ``repeats`` timings of each, after one warm-up of ``measured`` (first calls pay
    one-off costs), interleaved so that drift on a shared machine hits both alike."""
    measured()
    references, measures = [], []
    for _ in range(repeats):
        references.append(_seconds(reference))
        measures.append(_seconds(measured))
    return min(references), min(measures)


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

    plain_s, harness_s = _best_interleaved(plain_generate, lambda: harness(size), 3)
    one_by_one_s = _seconds(lambda: harness(1))
    ratio = plain_s / harness_s
    print(f"harness throughput ratio {ratio:.2f}")
    print(f"batched runner speed-up over item-by-item {one_by_one_s / harness_s:.2f}x")
    print(f"{len(items)} items, batch size {size}, {max_new} new tokens: plain HF generate {plain_s:.2f} s, "
          f"harness {harness_s:.2f} s, item-by-item {one_by_one_s:.2f} s")
    sorted_gain = bench_length_sorting(model, args.items, size)
    return {"ratio": ratio, "speedup": one_by_one_s / harness_s, "length_sorting": sorted_gain}


def bench_length_sorting(model, n_items: int, batch_size: int, task_name: str = "piqa") -> float:
    """Log-likelihood answers to a real task's items (lengths vary) batched in task order, as a plan
    without sorting would, against batched by length, as the runner's plan does."""
    task = get_task(task_name)
    items = task.items(n_items, 0)
    protocol = PROTOCOLS.get("single")(role="A")

    def answer(ordered):
        ctx = Context(Session(model, "torch"), task)
        for start in range(0, len(ordered), batch_size):
            protocol.run(ctx, ordered[start:start + batch_size])

    in_order_s, sorted_s = _best_interleaved(lambda: answer(items),
                                             lambda: answer(sorted(items, key=prompt_size)), 3)
    print(f"{task_name}, {len(items)} items by log-likelihood: batches of like length take "
          f"{sorted_s / in_order_s:.2f}x the time of batches in task order "
          f"({sorted_s:.2f} s against {in_order_s:.2f} s)")
    return in_order_s / sorted_s


def bench_cipher(model_name: str = "smollm2-135m", batch_size: int = 8, steps: int = 32, repeats: int = 5,
                 temperature: float = 1.0) -> dict:
    """CIPHER decoding (full-vocabulary mixture every step, nearest tokens of the turn) against plain
    greedy ``hf.generate`` of the same length on the same prompts and batch; interleaved medians.
    Greedy ``Session.decode`` is timed too, to show how much of the gap is the decoding loop itself."""
    from ..bench import PROMPT_WORDS, _interleaved_medians
    from .protocols.cipher import EmbeddingMixture

    model = load_model(model_name)
    words = PROMPT_WORDS.split()
    prompts = [" ".join(words[i:i + 12 + i]) for i in range(batch_size)]  # different lengths: a padded batch
    batch = model.encode(prompts)
    session = Session(model, "torch")
    lengths = {}

    def plain_generate():
        out = model.hf.generate(**batch, min_new_tokens=steps, max_new_tokens=steps, do_sample=False,
                                pad_token_id=model.pad_token_id)
        lengths["generate"] = out.shape[1] - batch["input_ids"].shape[1]

    def cipher():  # the turn as the protocol runs it: decoding, then its messages read by nearest token
        policy = EmbeddingMixture(model, temperature)
        ids = session.decode("B", prompts, (), steps, policy).ids
        policy.messages(ids)
        lengths["cipher"] = ids.shape[1]

    def greedy_decode():
        lengths["decode"] = session.decode("B", prompts, (), steps).ids.shape[1]

    torch.set_grad_enabled(False)
    medians = _interleaved_medians({"generate": plain_generate, "cipher": cipher, "decode": greedy_decode},
                                   repeats, warmup=1)
    # seconds per step, in case a batch ended early (every row at end-of-sequence)
    per_step = {name: medians[name] / lengths[name] for name in medians}
    ratio = per_step["cipher"] / per_step["generate"]
    print(f"cipher generation ratio {ratio:.2f} (CIPHER decoding / plain greedy generate, per step; target <= 1.3)")
    print(f"greedy Session.decode / generate {per_step['decode'] / per_step['generate']:.2f}; "
          f"cipher / greedy Session.decode {per_step['cipher'] / per_step['decode']:.2f} (the mixture's own cost)")
    print(f"{model_name}, batch {batch_size}, {steps} steps, T={temperature}, median of {repeats}: generate "
          f"{medians['generate']:.2f} s, cipher {medians['cipher']:.2f} s ({lengths['cipher']} steps), "
          f"greedy decode {medians['decode']:.2f} s ({lengths['decode']} steps)")
    return {"ratio": ratio, "decode_ratio": per_step["decode"] / per_step["generate"], **medians}


def bench_cascade(large: str = "qwen2.5-coder-0.5b", small: str = "smollm2-135m", n_items: int = 8,
                  horizon: int = 64, ns=(0, 8, 16, 32, 64, "all"), task_name: str = "gsm8k", repeats: int = 2) -> dict:
    """The reverse cascade's sweep over n (text handoff) on ``n_items`` items, against what it must cost
    at least: one L generation to the largest n plus the S continuations, run by hand on the same
    items (L decoded once; S given its prompt and L's first n tokens as text, where L had not ended by
    then). Interleaved, best of
    ``repeats``."""
    from .protocols.cascade import ReverseCascade

    models = {"A": load_model(large), "B": load_model(small)}
    task = get_task(task_name)
    items = task.items(n_items, 0)
    prompts = {role: [answer_prompt(models[role], task, it) for it in items] for role in models}
    torch.set_grad_enabled(False)
    parts = {}

    def sweep():
        forget_leads()      # L's generation is kept per process: each timed sweep must decode it once itself
        ctx = Context(Session(models, "torch"), task, horizon, pool=items)
        for n in ns:
            ReverseCascade(n=n).run(ctx, items)

    def by_hand():
        session = Session(models, "torch")
        start = time.perf_counter()
        lead = session.decode("A", prompts["A"], max_new_tokens=horizon)
        parts["L"] = time.perf_counter() - start
        tokenizer = models["A"].tokenizer
        eos = tokenizer.eos_token_id
        for n in ns:
            if n == "all":      # L's answer stands: S writes nothing
                continue
            # S continues only where L had not already ended within its first n tokens
            rows = [(p, tokenizer.decode(ids[:min(n, count)], skip_special_tokens=True))
                    for p, ids, count in zip(prompts["B"], lead.ids, lead.new_tokens)
                    if not (count <= n and count and int(ids[count - 1]) == eos)]
            if rows:
                session.generate("B", [p + h for p, h in rows], max_new_tokens=horizon)
        parts["S"] = time.perf_counter() - start - parts["L"]

    reference_s, sweep_s = _best_interleaved(by_hand, sweep, repeats)
    ratio = sweep_s / reference_s
    regenerating = len([n for n in ns if n != "all"]) * parts["L"] + parts["S"]
    print(f"cascade sweep cost ratio {ratio:.2f} (target <= 1.2)")
    print(f"sweep over n = {', '.join(map(str, ns))} on {n_items} {task_name} items, horizon {horizon}, "
          f"L {large}, S {small}: {sweep_s:.1f} s; one L generation + the S continuations {reference_s:.1f} s "
          f"(L {parts['L']:.1f} s, S {parts['S']:.1f} s); regenerating L's start for every n would take about "
          f"{regenerating:.1f} s ({regenerating / reference_s:.1f}x)")
    return {"ratio": ratio, "sweep_s": sweep_s, "reference_s": reference_s}


def bench_sampling(model_name: str = "gemma3-270m", n_items: int = 16, batch_size: int = 16,
                   max_new_tokens: int = 256, repeats: int = 1, task_name: str = "gsm8k",
                   stop: tuple[str, ...] = ("\n\n", "\nAnswer:", "\nQuestion:")) -> dict:
    """Sampled answers (nucleus 0.9, stop strings, as ac_replication_reasoning samples them) by
    ``Session.generate``, where a row that stops leaves the batch, against transformers' ``generate``
    on the same batches, which runs every row until the batch's last one stops. Interleaved, best of
    ``repeats``."""
    model = load_model(model_name)
    task = get_task(task_name)
    prompts = [answer_prompt(model, task, it) for it in task.items(n_items, 0)]
    batches = [prompts[start:start + batch_size] for start in range(0, len(prompts), batch_size)]
    torch.set_grad_enabled(False)
    lengths = {}

    def session_generate():
        session = Session(model, "torch")
        lengths["answer"] = [n for batch in batches for n in session.generate(
            "B", batch, max_new_tokens=max_new_tokens, do_sample=True, top_p=0.9, seed=0, stop=stop).new_tokens]

    def plain_generate():
        lengths["batch"] = []
        for prompts_of_batch in batches:
            batch = model.encode(prompts_of_batch)
            width = batch["input_ids"].shape[1]
            torch.manual_seed(0)
            ids = model.hf.generate(**batch, max_new_tokens=max_new_tokens, do_sample=True, top_p=0.9, top_k=0,
                                    pad_token_id=model.pad_token_id,
                                    stopping_criteria=StoppingCriteriaList([StopOnText(model.tokenizer, width, stop)]))
            lengths["batch"] += [ids.shape[1] - width] * len(prompts_of_batch)

    plain_s, session_s = _best_interleaved(plain_generate, session_generate, repeats)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"sampled generation speed-up {plain_s / session_s:.2f}x (transformers' generate ÷ Session.generate)")
    print(f"{len(prompts)} {task_name} items, {model_name}, batch size {batch_size}, up to {max_new_tokens} tokens: "
          f"transformers' generate {plain_s:.1f} s, running {mean(lengths['batch']):.0f} steps per row; "
          f"Session.generate {session_s:.1f} s, {mean(lengths['answer']):.0f} tokens per answer")
    return {"speedup": plain_s / session_s, "plain_s": plain_s, "session_s": session_s}


def bench_precision(model_name: str = "gemma3-270m", n_items: int = 16, batch_size: int = 16,
                    steps: int = 64, repeats: int = 1, task_name: str = "gsm8k") -> dict:
    """Sampled decoding (nucleus 0.9, as the generation experiments sample) of the same prompts in fp32
    and in bf16: every row decodes all ``steps`` (no stop), so both do the same work whatever they draw.
    Interleaved, best of ``repeats``."""
    from ..session import Sampler

    models = {dtype: load_model(model_name, dtype=dtype) for dtype in ("fp32", "bf16")}
    task = get_task(task_name)
    prompts = [answer_prompt(models["fp32"], task, it) for it in task.items(n_items, 0)]
    batches = [prompts[start:start + batch_size] for start in range(0, len(prompts), batch_size)]

    def decode(dtype):
        session = Session(models[dtype], "torch")
        for batch in batches:
            session.decode("B", batch, max_new_tokens=steps, stop_at_eos=False,
                           policy=Sampler.for_prompts(batch, 0, top_p=0.9))

    fp32_s, bf16_s = _best_interleaved(lambda: decode("fp32"), lambda: decode("bf16"), repeats)
    print(f"sampled decoding speed-up {fp32_s / bf16_s:.2f}x (fp32 ÷ bf16)")
    print(f"{len(prompts)} {task_name} items, {model_name}, batch size {batch_size}, {steps} steps per row on "
          f"{torch.get_num_threads()} thread(s): fp32 {fp32_s:.1f} s, bf16 {bf16_s:.1f} s")
    return {"speedup": fp32_s / bf16_s, "fp32_s": fp32_s, "bf16_s": bf16_s}
