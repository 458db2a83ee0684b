"""``cipher``: CIPHER debate (Pham et al., "Let Models Speak Ciphers: Multiagent Debate through
Embeddings", ICLR 2024).

At every decoding step a debater emits softmax(logits / T) · E, the probability-weighted average of
its input-embedding table, instead of a sampled token (``EmbeddingMixture``, a ``Session.decode``
policy). A turn ends before the first vector whose nearest token (Euclidean, over the whole table)
is end-of-sequence, as in the paper. The other debater reads the vectors as soft
tokens, between marker texts, where ``nl_debate`` puts the other agent's answer.

The answer is the lowest-temperature debater's (ties: B): its last turn read by nearest neighbour
(generation tasks), or its choice log-likelihoods with the other's last vectors as soft tokens
(choice tasks). Each debater reads only the other's previous turn, as in ``nl_debate``, so only one
chain of turns reaches the answer: round R is the answering debater, round R-1 the other, and so on
back to round 1. Turns nobody reads are not run (the answer is the same); every turn run is charged.

The debaters must share a vocabulary (the mixture lives in the sender's embedding table, read as the
receiver's): pairs whose vocabularies differ are refused before any work.
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch
from pydantic import Field, NonNegativeFloat, PositiveInt

from ...alignment.states import input_embedding_table
from ...compute import Compute
from ...errors import InterventionError, VocabularyMismatchError
from ...models import LoadedModel, load_model
from ...sampling import filtered
from ...session import Step
from ...spec import SoftTokens
from ..prompts import answer_prompt, question_text
from .ac import control_suffix
from .base import Context, Protocol, add_costs, answer, fmt, register_protocol, scored, vector_control

MESSAGE = "cipher_message"        # the name the vectors travel under beside the prompts
MARKERS = ("Another agent answered:\n", "\nConsider it, then give your own answer.\n")
TRACE_CHARS = 120

_TABLES: weakref.WeakKeyDictionary[LoadedModel, tuple] = weakref.WeakKeyDictionary()


def embedding_table(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token's input embedding as the model's embedding module outputs it (Gemma's scale
    included), and each row's squared norm; computed once per model."""
    if model not in _TABLES:
        table = input_embedding_table(model).to(model.device)   # fp32, beside the logits it mixes
        _TABLES[model] = (table, (table * table).sum(-1))
    return _TABLES[model]


class EmbeddingMixture:
    """A ``Session.decode`` policy that feeds softmax(logits / T) · E (T = 0: the argmax token's
    embedding), optionally over the top-k tokens or the top-p nucleus only (renormalised).

    It keeps the emitted vectors; ``messages()`` reads them by nearest token and cuts each row at its
    first nearest end-of-sequence. The nearest tokens of a whole turn are found in one product after
    decoding rather than one per step: ``Session.decode`` ends rows on the argmax token, never on the
    policy's, so the nearest-token rule only decides where a message ends, and one pass over the
    table per turn instead of per step keeps CIPHER near plain generation's cost (see
    ``interventions bench cipher``). Where decode ends a row first (argmax = end-of-sequence while the
    nearest token is not, which happens at high temperature), the message ends there.
    """

    def __init__(self, model: LoadedModel, temperature: float, top_k: int | None = None,
                 top_p: float | None = None):
        if temperature < 0:
            raise InterventionError(f"CIPHER temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise InterventionError(f"CIPHER top_p must be in (0, 1], got {top_p}")
        if top_k is not None and top_k < 1:
            raise InterventionError(f"CIPHER top_k must be at least 1, got {top_k}")
        self.table, self.sq_norms = embedding_table(model)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.eos = model.tokenizer.eos_token_id
        self.vectors: list[torch.Tensor] = []     # per step (rows, d)

    def weights(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mixture weights: (rows, V), or (rows, k) with their token ids when only k are kept."""
        return filtered(logits, self.temperature, self.top_k, self.top_p)

    def mix(self, probs: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        if ids is None:
            return probs @ self.table                                   # one (rows, V) @ (V, d)
        return torch.einsum("rk,rkd->rd", probs, self.table[ids])       # only the kept rows of E

    def nearest_tokens(self, vectors: torch.Tensor) -> torch.Tensor:
        """argmin_i ||v - E_i||² = argmin_i (||E_i||² - 2 v·E_i), for (..., d) vectors."""
        flat = vectors.reshape(-1, vectors.shape[-1])
        return (self.sq_norms - 2 * flat @ self.table.T).argmin(-1).reshape(vectors.shape[:-1])

    def __call__(self, step: Step) -> torch.Tensor:
        vectors = self.mix(*self.weights(step.logits.float()))
        self.vectors.append(vectors)
        return vectors

    def messages(self, ids: torch.Tensor) -> tuple[list[torch.Tensor], list[list[int]]]:
        """Per row, the (n, d) vectors and their nearest ids before the first step whose nearest token
        is end-of-sequence, or before the step at which ``decode`` ended the row (its ``ids`` hit EOS)."""
        if not self.vectors:
            return [torch.zeros(0, self.table.shape[1]) for _ in ids], [[] for _ in ids]
        vectors = torch.stack(self.vectors, 1)
        nearest = self.nearest_tokens(vectors)
        ends = (nearest == self.eos) | (ids[:, :nearest.shape[1]] == self.eos)
        out_vectors, out_ids = [], []
        for row in range(len(ids)):
            n = int(ends[row].nonzero()[0]) if bool(ends[row].any()) else nearest.shape[1]
            out_vectors.append(vectors[row, :n])
            out_ids.append(nearest[row, :n].tolist())
        return out_vectors, out_ids


def check_shared_vocabulary(a: LoadedModel, b: LoadedModel) -> None:
    """CIPHER's vectors are mixtures over the sender's vocabulary read as the receiver's: refuse
    pairs whose tokenizers or embedding tables differ."""
    width_a, width_b = a.adapter.embedding(a.hf).weight.shape[1], b.adapter.embedding(b.hf).weight.shape[1]
    if not a.shares_vocabulary(b) or width_a != width_b:
        raise VocabularyMismatchError(
            f"cipher needs debaters that share one vocabulary and embedding width; {a.name} "
            f"({len(a.tokenizer)} tokens, {width_a}-wide) and {b.name} ({len(b.tokenizer)} tokens, "
            f"{width_b}-wide) differ. Across families use ac with an align map, nl_message or nl_debate.")


def insertion_point(model: LoadedModel, task, item) -> int:
    """The token index where ``nl_debate``'s note would go: before the question text (generation)
    or at the start of the prompt (choice tasks)."""
    prompt = answer_prompt(model, task, item)
    start = 0 if task.scoring == "choice_loglik" else prompt.rfind(question_text(task, item))
    if start < 0:
        raise InterventionError(f"cipher: the question of {item.id} is not in its prompt; cannot place the message")
    head = model.tokenizer(prompt[:start])["input_ids"]
    if model.tokenizer(prompt)["input_ids"][:len(head)] != head:
        raise InterventionError(f"cipher: the prompt of {item.id} does not tokenize with its head "
                                "as a prefix; the message cannot be placed before the question")
    return len(head)


@register_protocol("cipher")
class Cipher(Protocol):
    """CIPHER debate: debaters exchange embedding mixtures instead of sampled tokens."""

    roles = ("A", "B")

    rounds: PositiveInt = Field(2, description="debate rounds; round 1 answers alone")
    temperatures: tuple[NonNegativeFloat, NonNegativeFloat] = Field(
        (1.0, 0.2), description="(A, B) mixture temperatures; the lower one's debater answers")
    top_k: PositiveInt | None = Field(None, description="mix only the k most likely tokens")
    top_p: float | None = Field(None, gt=0, le=1, description="mix only the top-p nucleus")
    message_tokens: PositiveInt = Field(24, description="at most this many vectors per turn")
    control: Literal["none", "random", "zero", "mismatched"] = Field(
        "none", description="replace the messages: random, zero, or another item's debate")

    quiet_defaults = ("top_k", "top_p", "control")

    @property
    def name(self) -> str:
        sampling = "".join(f"_{n}{fmt(getattr(self, n))}" for n in ("top_k", "top_p") if getattr(self, n) is not None)
        temps = "-".join(fmt(float(t)) for t in self.temperatures)
        return f"cipher_r{self.rounds}_t{temps}{sampling}{control_suffix(self.control)}"

    @property
    def family(self) -> str:
        return f"cipher{control_suffix(self.control)}"

    def applies_to(self, task, pair) -> bool:
        if pair.get("A") != pair.get("B"):  # the runner has loaded both already: this reuses them
            check_shared_vocabulary(load_model(pair["A"]), load_model(pair["B"]))
        return super().applies_to(task, pair)

    def answering_role(self) -> str:
        return "A" if self.temperatures[0] < self.temperatures[1] else "B"

    def chain(self) -> list[str]:
        """Who speaks in rounds 1..R: the answering debater last, alternating backwards."""
        last = self.answering_role()
        other = "B" if last == "A" else "A"
        return [last if (self.rounds - k) % 2 == 0 else other for k in range(1, self.rounds + 1)]

    def turn(self, ctx: Context, role: str, items, heard: list[torch.Tensor] | None):
        """One CIPHER turn of ``role`` on ``items``, reading ``heard`` (per row) when given."""
        model = ctx.model(role)
        prompts, specs = self.prompts(ctx, role, items, heard)
        policy = EmbeddingMixture(model, self.temperatures["AB".index(role)], self.top_k, self.top_p)
        decoded = ctx.session.decode(role, prompts, specs, self.message_tokens, policy,
                                     control=vector_control(self.control))
        vectors, nearest = policy.messages(decoded.ids)
        return vectors, nearest, decoded.compute

    def prompts(self, ctx: Context, role: str, items, heard):
        """``role``'s prompts, and the soft tokens that place ``heard`` where nl_debate's note goes."""
        model = ctx.model(role)
        texts = [answer_prompt(model, ctx.task, it) for it in items]
        if heard is None:
            return texts, []
        points = {insertion_point(model, ctx.task, it) for it in items}
        if len(points) > 1:
            raise InterventionError(f"cipher: the prompts of this batch place the message at different token "
                                    f"indices {sorted(points)}; run items of one prompt layout together")
        spec = SoftTokens(model=role, message=MESSAGE, at=points.pop(), markers=MARKERS)
        return {role: texts, MESSAGE: heard}, [spec]

    def run(self, ctx: Context, items):
        check_shared_vocabulary(ctx.model("A"), ctx.model("B"))
        chain, choice = self.chain(), ctx.task.scoring == "choice_loglik"
        totals = [Compute() for _ in items]
        trace: list[list[str]] = [[] for _ in items]
        sources = ctx.sources(items, self.control)   # every turn before the last reads the source item
        heard = None
        speakers = chain[:-1]
        for role in speakers:
            heard, nearest, costs = self.turn(ctx, role, sources, heard)
            self._note(ctx, role, nearest, costs, totals, trace)
        last = chain[-1]
        if choice:
            prompts, specs = self.prompts(ctx, last, items, heard)
            outcomes = answer(ctx, last, prompts, items, specs, vector_control(self.control))
        else:
            _, nearest, costs = self.turn(ctx, last, items, heard)
            self._note(ctx, last, nearest, costs, totals, trace)
            tok = ctx.model(last).tokenizer
            outcomes = [scored(ctx.task, it, tok.decode(ids, skip_special_tokens=True), Compute())
                        for it, ids in zip(items, nearest)]
        for outcome, turns, source in zip(outcomes, trace, sources):
            outcome.extra["cipher_trace"] = turns
            outcome.extra["answered_by"] = last
            if self.control == "mismatched":
                outcome.extra["message_from"] = source.id
        return add_costs(outcomes, totals)

    def _note(self, ctx, role, nearest, costs, totals, trace) -> None:
        tok = ctx.model(role).tokenizer
        for row, (ids, cost) in enumerate(zip(nearest, costs)):
            totals[row].merge(cost)
            text = tok.decode(ids, skip_special_tokens=False).replace("\n", " ")
            trace[row].append(f"{role}: {text[:TRACE_CHARS]}")


__all__ = ["Cipher", "EmbeddingMixture", "VocabularyMismatchError", "check_shared_vocabulary", "embedding_table"]
