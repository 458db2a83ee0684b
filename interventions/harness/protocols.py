"""Communication protocols as declarative objects, and how each one answers a batch of items.

A protocol turns task items into outcomes (score, prediction, compute). Add one by writing a
function ``(protocol, context, items) -> list[Outcome]`` and registering it in PROTOCOLS.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..alignment import fit_linear_map, width_mismatch
from ..backends import Backend
from ..errors import InterventionError, MissingRoleError, suggest
from ..models.loaded import LoadedModel
from . import agents
from .compute import Compute, ModelShape
from .prompts import answer_prompt, debate_note, message_prompt, sender_prompt
from .tasks import Task, TaskItem, choice_accuracy


class UnknownProtocolError(InterventionError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Protocol:
    kind: str                       # single | silent | skyline | nl_message | nl_debate | ac
    role: str = "B"                 # single: which model answers alone
    k: int | float | None = None    # ac: sender block
    j: int | float | None = None    # ac: receiver block
    combine: str = "replace"        # ac: combine function name
    align: str = "none"             # ac: none | trailing | linear | auto (linear across models)
    sender_format: str = "raw"      # ac: raw | chat (see prompts.sender_prompt)
    rounds: int = 2                 # nl_debate
    message_tokens: int = 24        # nl_message

    def __post_init__(self) -> None:
        if self.kind not in PROTOCOLS:
            raise UnknownProtocolError(f"unknown protocol {self.kind!r}.{suggest(self.kind, list(PROTOCOLS))} "
                                       f"Known: {', '.join(PROTOCOLS)}.")

    @property
    def name(self) -> str:
        if self.kind == "ac":
            fmt = "" if self.sender_format == "raw" else f"_{self.sender_format}"
            align = "" if self.align == "none" else f"_{self.align}"
            return f"ac_{self.combine}_k{_fmt_layer(self.k)}_j{_fmt_layer(self.j)}{align}{fmt}"
        if self.kind == "single":
            return f"single_{self.role}"
        if self.kind == "nl_debate":
            return f"nl_debate_r{self.rounds}"
        return self.kind

    @property
    def needs_two_models(self) -> bool:
        return self.kind in ("nl_message", "nl_debate", "ac")

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt_layer(layer) -> str:
    return str(layer) if isinstance(layer, int) else f"{layer:g}"


@dataclass
class Outcome:
    score: float
    prediction: str
    compute: Compute
    score_norm: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Context:
    """What protocols share while one (model pair, task) is evaluated."""

    models: dict[str, LoadedModel]
    task: Task
    backend: Backend
    max_new_tokens: int = 16
    sender_cache: dict = field(default_factory=dict)   # (item id, k, format) -> (A's vector, tokens)
    maps: dict = field(default_factory=dict)           # (k, j) -> LinearMap
    shapes: dict = field(default_factory=dict)         # role -> ModelShape

    def model(self, role: str) -> LoadedModel:
        if role not in self.models:
            raise MissingRoleError(f"this protocol needs model role {role!r}; the experiment gives "
                                   f"{sorted(self.models)}")
        return self.models[role]

    def shape(self, role: str) -> ModelShape:
        if role not in self.shapes:  # counting parameters walks the whole model: do it once
            self.shapes[role] = ModelShape.from_hf(self.model(role).hf)
        return self.shapes[role]


# --------------------------------------------------------------------------- answering

def _answer(ctx: Context, role: str, prompts: list[str], items: list[TaskItem],
            injection: agents.Injection | None = None) -> tuple[list[Outcome], list]:
    """Score ``prompts`` answered by ``role``; returns outcomes and per-item raw answers."""
    model, shape, task = ctx.model(role), ctx.shape(role), ctx.task
    start = time.perf_counter()
    outcomes, raw = [], []
    if task.scoring == "choice_loglik":
        scores = agents.choice_logliks(model, prompts, [it.choices for it in items], ctx.backend, injection)
        for item, lls, n_tokens in zip(items, scores.logliks, scores.tokens):
            acc = choice_accuracy(lls, list(item.choices), item.answer_index)
            compute = Compute()
            compute.add_prefill(role, shape, n_tokens)
            outcomes.append(Outcome(float(acc["acc"]), item.choices[acc["pred"]], compute, float(acc["acc_norm"])))
            raw.append(lls)
    else:
        gen = agents.generate(model, prompts, ctx.backend, ctx.max_new_tokens, injection)
        for item, text, n_prompt, n_new in zip(items, gen.texts, gen.prompt_tokens, gen.new_tokens):
            compute = Compute()
            compute.add_generation(role, shape, n_prompt, n_new)
            outcomes.append(Outcome(float(task.score(item, text)), text.strip(), compute))
            raw.append(text)
    share = (time.perf_counter() - start) / max(1, len(items))
    for outcome in outcomes:
        outcome.compute.wall_s += share
    return outcomes, raw


def _merge_compute(outcomes: list[Outcome], extra: list[Compute]) -> list[Outcome]:
    for outcome, more in zip(outcomes, extra):
        outcome.compute.merge(more)
    return outcomes


def run_single(p: Protocol, ctx: Context, items: list[TaskItem]) -> list[Outcome]:
    model = ctx.model(p.role)
    return _answer(ctx, p.role, [answer_prompt(model, ctx.task, it) for it in items], items)[0]


def run_silent(p: Protocol, ctx: Context, items: list[TaskItem]) -> list[Outcome]:
    return run_single(Protocol("single", role="B"), ctx, items)


def run_skyline(p: Protocol, ctx: Context, items: list[TaskItem]) -> list[Outcome]:
    model = ctx.model("B")
    return _answer(ctx, "B", [answer_prompt(model, ctx.task, it, context=it.context) for it in items], items)[0]


def run_nl_message(p: Protocol, ctx: Context, items: list[TaskItem]) -> list[Outcome]:
    sender, receiver = ctx.model("A"), ctx.model("B")
    start = time.perf_counter()
    sent = agents.generate(sender, [message_prompt(sender, it) for it in items], ctx.backend, p.message_tokens)
    share = (time.perf_counter() - start) / len(items)
    costs = []
    for n_prompt, n_new in zip(sent.prompt_tokens, sent.new_tokens):
        c = Compute(wall_s=share)
        c.add_generation("A", ctx.shape("A"), n_prompt, n_new)
        costs.append(c)
    messages = [text.strip().split("\n")[0] for text in sent.texts]
    prompts = [answer_prompt(receiver, ctx.task, it, note=f"Your partner says: {m}") for it, m in zip(items, messages)]
    outcomes, _ = _answer(ctx, "B", prompts, items)
    for outcome, message in zip(outcomes, messages):
        outcome.extra["message"] = message
    return _merge_compute(outcomes, costs)


def run_nl_debate(p: Protocol, ctx: Context, items: list[TaskItem]) -> list[Outcome]:
    """Two agents answer, then each re-answers having seen the other's last answer; majority
    (agreement) wins, a split goes to the more confident agent (choice tasks) or to B."""
    roles = ("A", "B")
    totals = [Compute() for _ in items]
    answers: dict[str, list] = {}
    for round_index in range(p.rounds):
        new_answers = {}
        for role in roles:
            other = "B" if role == "A" else "A"
            prompts = []
            for i, item in enumerate(items):
                note = debate_note(answers[other][i][0].prediction) if round_index else ""
                prompts.append(answer_prompt(ctx.model(role), ctx.task, item, note=note))
            outcomes, raw = _answer(ctx, role, prompts, items)
            new_answers[role] = list(zip(outcomes, raw))
            for total, outcome in zip(totals, outcomes):
                total.merge(outcome.compute)
        answers = new_answers
    final = []
    for i in range(len(items)):
        a, b = answers["A"][i], answers["B"][i]
        chosen = b
        if ctx.task.scoring == "choice_loglik" and a[0].prediction != b[0].prediction:
            chosen = max((a, b), key=lambda ans: _confidence(ans[1]))
        outcome = Outcome(chosen[0].score, chosen[0].prediction, totals[i], chosen[0].score_norm,
                          {"agree": a[0].prediction == b[0].prediction})
        final.append(outcome)
    return final


def _confidence(logliks: list[float]) -> float:
    probs = torch.softmax(torch.tensor(logliks), dim=0)
    return float(probs.max())


def run_ac(p: Protocol, ctx: Context, items: list[TaskItem]) -> list[Outcome]:
    """Activation communication: A's last-token state at block k, combined into B's last
    prompt token at block j (through a fitted map when asked), then B answers."""
    sender, receiver = ctx.model("A"), ctx.model("B")
    k, j = sender.resolve_layer(p.k), receiver.resolve_layer(p.j)
    missing = [it for it in items if (it.id, k, p.sender_format) not in ctx.sender_cache]
    costs = {it.id: Compute() for it in items}
    if missing:
        start = time.perf_counter()
        prompts = [sender_prompt(sender, ctx.task, it, p.sender_format) for it in missing]
        vectors, lengths = agents.sender_vectors(sender, prompts, [k], ctx.backend)
        share = (time.perf_counter() - start) / len(missing)
        for it, vec, n_tokens in zip(missing, vectors[k], lengths):
            ctx.sender_cache[(it.id, k, p.sender_format)] = (vec, n_tokens)
            costs[it.id].wall_s += share
    cached = [ctx.sender_cache[(it.id, k, p.sender_format)] for it in items]
    for it, (_, n_tokens) in zip(items, cached):  # every item is charged its sender forward, cached or not
        costs[it.id].add_prefill("A", ctx.shape("A"), n_tokens, upto_layer=k)
    vectors = torch.stack([vec for vec, _ in cached])
    align = p.align
    if align == "auto":  # a fitted map between different models, none within one model
        align = "none" if sender.weight_sha256 == receiver.weight_sha256 else "linear"
    if align == "linear":
        if (k, j) not in ctx.maps:
            ctx.maps[(k, j)] = fit_linear_map(sender, k, receiver, j)
        vectors = ctx.maps[(k, j)](vectors)
    elif vectors.shape[-1] != receiver.d_model and align != "trailing":
        raise width_mismatch(vectors.shape[-1], receiver.d_model)
    injection = agents.Injection(j, p.combine, vectors)
    prompts = [answer_prompt(receiver, ctx.task, it) for it in items]
    outcomes, _ = _answer(ctx, "B", prompts, items, injection)
    if align == "linear":
        for outcome in outcomes:
            outcome.extra["map_r2_heldout"] = round(ctx.maps[(k, j)].r2_heldout, 4)
    return _merge_compute(outcomes, [costs[it.id] for it in items])


PROTOCOLS: dict[str, Callable[[Protocol, Context, list[TaskItem]], list[Outcome]]] = {
    "single": run_single, "silent": run_silent, "skyline": run_skyline,
    "nl_message": run_nl_message, "nl_debate": run_nl_debate, "ac": run_ac,
}


def run_protocol(p: Protocol, ctx: Context, items: list[TaskItem]) -> list[Outcome]:
    return PROTOCOLS[p.kind](p, ctx, items)
