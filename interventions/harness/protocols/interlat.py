"""``interlat``: A's whole plan, as last-layer hidden states, spliced into B's input embeddings
(Interlat, Du et al., 2026).

A reads the task (its private context and the question, or the question) and writes a short plan
of up to ``plan_tokens`` tokens; its last-layer hidden state at every step (the state that chose
each plan token) is the message. It reaches B's input embeddings between two marker texts, at the
start of B's user turn, through one of two channels:

- ``ridge``: training-free, a ridge map from A's final hidden states to B's input embeddings fitted
  on corpus sentences (``interventions.adapters.embed_map``);
- ``adapter``: the small trained adapter (``interventions.adapters``), trained lazily on first use
  on items of the task that this run does not evaluate (the tail of the task's shuffled pool; an
  overlap with the evaluated items is refused), cached by fingerprint, or loaded from ``checkpoint``.

``compress`` = K pools the message into K latent steps. ``control``: ``random`` or ``zero``
(applied by the program to every message vector), ``mismatched`` (the plan of another item), or
``covariance`` (Gaussian noise with the mean and covariance of the channel's latents over training
items, the length of the real message).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from ...adapters import (
    AdapterConfig,
    Example,
    LatentAdapter,
    TrainingConfig,
    adapter_path,
    fingerprint,
    load_adapter,
    pool_segments,
    save_adapter,
    segment_count,
    train_adapter,
    trajectory_map,
)
from ...compute import Compute
from ...controls_covariance import CovarianceNoise
from ...errors import InterventionError
from ...session import Sampler
from ...spec import SoftTokens
from ..prompts import answer_prompt, question_text
from ..tasks.base import shuffled_prefix
from .ac import control_suffix
from .base import (
    Context,
    Protocol,
    add_costs,
    answer,
    register_protocol,
    vector_control,
)

MESSAGE = "interlat"            # the name B's soft tokens read the per-row latents under
PLAN_INSTRUCTION = "Before answering, write a short plan: the facts and steps that lead to the answer."
RECIPE_VERSION = 1              # bump when training changes in a way the hyper-parameters do not show


class InterlatError(InterventionError, ValueError):
    pass


@dataclass
class Plan:
    states: torch.Tensor        # (L, d_A) A's final hidden state at each plan step
    ids: list[int]              # the plan's tokens (A's tokenizer)
    text: str
    compute: Compute


def plan_prompt(model, task, item) -> str:
    """What A reads before writing its plan: its private context (if any) and the question."""
    if task.scoring == "choice_loglik":
        question = item.meta.get("prompt") or f"Question: {item.question}\nOptions: {'; '.join(item.choices)}"
    else:
        question = question_text(task, item)
    text = "\n".join(p for p in (item.context, question, PLAN_INSTRUCTION) if p)
    return model.format_prompt(text) if model.has_chat_template else f"{text}\nPlan:"


def sender_plans(ctx: Context, items, tokens: int, temperature: float) -> list[Plan]:
    """A's plan for each item, decoded once per session (every item is charged its decoding)."""
    key = lambda it: ("interlat-plan", it.id, tokens, temperature, ctx.seed)
    missing = [it for it in items if key(it) not in ctx.session.memo]
    if missing:
        sender = ctx.model("A")
        seeds = [int(hashlib.sha256(f"{ctx.seed}:{it.id}".encode()).hexdigest()[:8], 16) for it in missing]
        out = ctx.session.decode("A", [plan_prompt(sender, ctx.task, it) for it in missing], (), tokens,
                                 Sampler(temperature, seeds), needs_hidden=True)
        eos = sender.tokenizer.eos_token_id
        for row, it in enumerate(missing):
            ids = out.ids[row, :out.new_tokens[row]].tolist()
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            keep = max(1, len(ids))   # a plan that ends at once still sends the state that ended it
            states = out.hidden[row, :keep].float().clone()
            ctx.session.memo[key(it)] = Plan(states, ids, out.texts[row].strip(), out.compute[row])
    plans = []
    for it in items:
        plan = ctx.session.memo[key(it)]
        charged = plan.compute.charged_again(plan.compute.wall_s if it in missing else 0.0)
        plans.append(Plan(plan.states, plan.ids, plan.text, charged))
    return plans


def head_length(model, chat: bool) -> int:
    """Tokens before the user's text in B's prompt (chat header, BOS): where the message goes. The
    common prefix of a prompt with empty text and one with text."""
    empty, full = (model.tokenizer(model.format_prompt(t, chat=chat))["input_ids"] for t in ("", "Question"))
    return next((i for i, (x, y) in enumerate(zip(empty, full)) if x != y), min(len(empty), len(full)))


def training_items(task, n: int, seed: int, evaluated) -> list:
    """``n`` items for training, from the end of the task's shuffled pool (evaluation takes its
    prefix), skipping items without a gold answer; refuses any overlap with ``evaluated``."""
    taken = {it.id for it in evaluated}
    seen = {(it.context, it.question) for it in evaluated}
    pool = [it for it in reversed(shuffled_prefix(task.all_items(), None, seed)) if it.answer]
    chosen = [it for it in pool if it.id not in taken and (it.context, it.question) not in seen][:n]
    if len(chosen) < min(n, 8):
        raise InterlatError(f"interlat: {task.name} has only {len(chosen)} items with answers outside the "
                            f"{len(taken)} evaluated ones; the adapter needs training items (train_items={n})")
    return chosen


def answer_text(model, task, item) -> str:
    """B's gold continuation, tokenized as its answer is scored."""
    if task.scoring == "choice_loglik":
        return " " + item.choices[item.answer_index]
    return item.answer if model.has_chat_template else " " + item.answer


@register_protocol("interlat")
class Interlat(Protocol):
    """A's plan trajectory into B's input embeddings, through a ridge map or a trained adapter."""

    roles = ("A", "B")

    channel: Literal["adapter", "ridge"] = Field("adapter", description="trained adapter, or training-free ridge map")
    plan_tokens: PositiveInt = Field(24, description="A writes up to this many plan tokens")
    temperature: NonNegativeFloat = Field(0.0, description="A's sampling temperature for its plan (0: greedy)")
    compress: PositiveInt | None = Field(None, description="K: pool the message into K latent steps")
    markers: tuple[str, str] = Field(("<bop>", "<eop>\n"), description="texts around the latents in B's prompt")
    control: Literal["none", "random", "zero", "mismatched", "covariance"] = "none"
    n_sentences: PositiveInt = Field(3000, description="ridge: corpus sentences the map is fitted on")
    train_items: PositiveInt = Field(128, description="adapter: task items trained on (never evaluated ones)")
    train_steps: PositiveInt = Field(120, description="adapter: optimiser steps")
    train_batch: PositiveInt = Field(8, description="adapter: items per step")
    lr: PositiveFloat = 1e-3
    ramp: float = Field(0.75, gt=0, le=1, description="adapter: share of steps over which the text->latent "
                        "mixing rate rises from 0 to 1")
    separation: NonNegativeFloat = Field(0.1, description="adapter: weight of the separation term")
    alignment: NonNegativeFloat = Field(0.1, description="adapter: weight of the plan-alignment term")
    heads: PositiveInt = Field(4, description="adapter: attention heads")
    checkpoint: str | None = Field(None, description="adapter: a saved adapter to load instead of training")
    covariance_items: PositiveInt = Field(32, description="covariance control: training items whose latents "
                                          "the noise is fitted on")

    @property
    def family(self) -> str:
        return f"interlat_{self.channel}{control_suffix(self.control)}"

    @property
    def name(self) -> str:
        compress = f"_K{self.compress}" if self.compress else ""
        return f"interlat_{self.channel}{compress}{control_suffix(self.control)}"

    # ------------------------------------------------------------------ the channel

    def run(self, ctx: Context, items):
        sources = ctx.sources(items, "mismatched" if self.control == "mismatched" else "none")
        plans = sender_plans(ctx, sources, self.plan_tokens, self.temperature)
        translate, described = self.channel_for(ctx)
        with torch.no_grad():
            latents = [translate(plan.states) for plan in plans]
        if self.control == "covariance":
            noise = self.covariance_noise(ctx, translate, described)
            latents = [noise.sample(len(v), it.id) for v, it in zip(latents, items)]
            described = {**described, "control": noise.describe()}
        receiver = ctx.model("B")
        chat = ctx.task.scoring != "choice_loglik" and receiver.has_chat_template
        soft = SoftTokens(model="B", message=MESSAGE, at=head_length(receiver, chat), markers=self.markers)
        prompts = {"B": [answer_prompt(receiver, ctx.task, it) for it in items], MESSAGE: latents}
        control = "none" if self.control == "covariance" else vector_control(self.control)
        outcomes = answer(ctx, "B", prompts, items, [soft], control)
        for outcome, plan, source, vectors in zip(outcomes, plans, sources, latents):
            outcome.extra.update(plan=plan.text, message_vectors=len(vectors), channel=described)
            if self.control == "mismatched":
                outcome.extra["message_from"] = source.id
        return add_costs(outcomes, [plan.compute for plan in plans])

    def channel_for(self, ctx: Context):
        """(states (L, d_A) -> latents (S, d_B), what the channel is, for the rows)."""
        sender, receiver = ctx.model("A"), ctx.model("B")
        if self.channel == "ridge":
            mapping = trajectory_map(sender, receiver, self.n_sentences, ctx.seed)

            def ridge(states):
                mapped = mapping(states)
                segments = segment_count(len(mapped), self.compress)
                return mapped if segments == len(mapped) else pool_segments(mapped, segments)
            return ridge, mapping.describe()
        adapter, described = self.adapter(ctx)
        return adapter, described

    # ------------------------------------------------------------------ the trained adapter

    def recipe(self, ctx: Context, train) -> dict:
        """Everything the adapter's training depends on besides the two models' weights."""
        ids = hashlib.sha256("\n".join(it.id for it in train).encode()).hexdigest()[:16]
        return {"version": RECIPE_VERSION, "task": ctx.task.name, "task_source": ctx.task.source,
                "train_ids": ids, "n_train": len(train), "plan_tokens": self.plan_tokens,
                "temperature": self.temperature, "seed": ctx.seed, "markers": list(self.markers),
                "compress": self.compress, "heads": self.heads, "plan_instruction": PLAN_INSTRUCTION,
                "training": self.training_config(ctx).to_dict()}

    def training_config(self, ctx: Context) -> TrainingConfig:
        return TrainingConfig(self.train_steps, self.train_batch, self.lr, self.ramp, self.separation,
                              self.alignment, ctx.seed)

    def adapter(self, ctx: Context):
        sender, receiver = ctx.model("A"), ctx.model("B")
        if self.checkpoint:
            adapter = load_adapter(self.checkpoint, sender, receiver)
            if adapter is None:
                raise InterlatError(f"interlat: no readable adapter checkpoint at {self.checkpoint}")
            return adapter, {"kind": "adapter", "checkpoint": self.checkpoint}
        train = training_items(ctx.task, self.train_items, ctx.seed, ctx.pool)
        recipe = self.recipe(ctx, train)
        key = fingerprint(sender, receiver, ctx.task.name, recipe)
        memo = ("interlat-adapter", key)
        if memo not in ctx.session.memo:
            path = adapter_path(key)
            adapter = load_adapter(path, sender, receiver)
            if adapter is None:
                adapter = self.train(ctx, train, recipe, path)
            ctx.session.memo[memo] = adapter
        return ctx.session.memo[memo], {"kind": "adapter", "fingerprint": key}

    def train(self, ctx: Context, train, recipe: dict, path) -> LatentAdapter:
        sender, receiver = ctx.model("A"), ctx.model("B")
        embed = receiver.adapter.embedding(receiver.hf)
        with torch.no_grad():
            norms = torch.linalg.vector_norm(embed(torch.arange(receiver.vocab_size)).float(), dim=-1)
        config = AdapterConfig(sender.d_model, receiver.d_model, bound=float(norms.max()),
                               init_norm=float(norms.median()), heads=self.heads, compress_to=self.compress)
        adapter = LatentAdapter(config)
        examples = self.examples(ctx, train)
        curve = train_adapter(adapter, receiver.hf, examples, self.training_config(ctx),
                              desc=f"interlat adapter {sender.name} -> {receiver.name}")
        final = curve[-max(1, len(curve) // 10):]
        save_adapter(adapter, path, sender, receiver, {
            "fingerprint": path.stem, "recipe": recipe, "curve": curve,
            "final_ce": sum(c["ce"] for c in final) / len(final),
            "train_item_ids": [it.id for it in train]})
        return adapter

    def examples(self, ctx: Context, train) -> list[Example]:
        """The training items as B sees them (see ``adapters.training.Example``)."""
        sender, receiver = ctx.model("A"), ctx.model("B")
        plans = sender_plans(ctx, train, self.plan_tokens, self.temperature)
        same_vocab = sender.tokenizer.get_vocab() == receiver.tokenizer.get_vocab()
        tok = receiver.tokenizer
        embed = receiver.adapter.embedding(receiver.hf)
        chat = ctx.task.scoring != "choice_loglik" and receiver.has_chat_template
        cut = head_length(receiver, chat)
        before, after = (tok(m, add_special_tokens=False)["input_ids"] if m else [] for m in self.markers)
        out = []
        with torch.no_grad():   # plain tensors (not inference ones): the adapter's graph reads them
            for item, plan in zip(train, plans):
                prompt = tok(answer_prompt(receiver, ctx.task, item))["input_ids"]
                plan_ids = plan.ids if same_vocab else tok(plan.text, add_special_tokens=False)["input_ids"]
                answer_ids = torch.tensor(tok(answer_text(receiver, ctx.task, item), add_special_tokens=False)
                                          ["input_ids"], dtype=torch.long)
                if not len(answer_ids):
                    continue
                ids = lambda xs: torch.tensor(xs, dtype=torch.long)
                out.append(Example(trajectory=plan.states.clone(), plan_text=embed(ids(plan_ids)).float(),
                                   head=embed(ids(prompt[:cut] + before)).float(),
                                   tail=embed(ids(after + prompt[cut:])).float(), answer_ids=answer_ids,
                                   answer_embeds=embed(answer_ids).float(), answer=item.answer))
        return out

    # ------------------------------------------------------------------ the covariance control

    def covariance_noise(self, ctx: Context, translate, described: dict) -> CovarianceNoise:
        """Gaussian fitted on the channel's latents of training items (never evaluated ones)."""
        reference = training_items(ctx.task, self.covariance_items, ctx.seed, ctx.pool)
        key = ("interlat-covariance", repr(sorted(described.items())), self.compress, self.plan_tokens,
               self.temperature, tuple(it.id for it in reference))
        if key not in ctx.session.memo:
            plans = sender_plans(ctx, reference, self.plan_tokens, self.temperature)
            with torch.no_grad():
                vectors = torch.cat([translate(plan.states) for plan in plans])
            ctx.session.memo[key] = CovarianceNoise.fit(vectors)
        return ctx.session.memo[key]
