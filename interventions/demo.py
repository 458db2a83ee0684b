"""The foundation demo: inspect a prompt, then one activation-communication splice between
two SmolLM2 agents, printing the receiver's answer without and with the splice."""

from __future__ import annotations

from . import execute
from .models import load_model
from .spec import Site, Splice

SENDER_TEXT = "Maria is at the Colosseum"
RECEIVER_QUESTION = "Which country is Maria in? Answer with the country name only."


def run_demo(model_name: str = "smollm2-135m", layers: tuple[int, ...] = (3, 9, 15),
             backend: str = "transformer_lens", max_new_tokens: int = 12) -> dict:
    model = load_model(model_name)
    receiver_prompt = model.format_prompt(RECEIVER_QUESTION)
    # A reads the raw sentence so its last token is the landmark (see DESIGN.md's pilot)
    prompts = {"A": [SENDER_TEXT], "B": [receiver_prompt]}
    batch = model.encode(prompts["B"])
    silent = model.tokenizer.batch_decode(
        execute.get_backend(backend).generate(model, batch, [], max_new_tokens), skip_special_tokens=True)
    answers = {"silent (no message)": silent[0].strip()}
    for layer in layers:  # the graft's effect depends strongly on depth
        for combine in ("replace", "mean", "sum"):
            spec = Splice(source=Site("A", layer), target=Site("B", layer), combine=combine)
            result = execute.run(spec, model, prompts, backend=backend, max_new_tokens=max_new_tokens)
            answers[f"AC {combine} k=j={layer}"] = result.texts[0].strip()
    skyline = execute.get_backend(backend).generate(
        model, model.encode([model.format_prompt(f"{SENDER_TEXT} {RECEIVER_QUESTION}")]), [], max_new_tokens)
    answers["skyline (B reads A's sentence)"] = model.tokenizer.decode(skyline[0], skip_special_tokens=True).strip()
    return {"model": model.facts(), "sender": SENDER_TEXT, "receiver": RECEIVER_QUESTION, "answers": answers}
