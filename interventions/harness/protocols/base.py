"""What every protocol is: a typed, frozen, registered plugin that answers a batch of task items.

A protocol says who sees what, which channel carries the message, and how the answer is scored.
Subclass ``Protocol``, declare your fields with types and defaults, and register it:

    @register_protocol("my_channel")
    class MyChannel(Protocol):
        roles = ("A", "B")
        scale: float = 1.0

        def run(self, ctx, items):
            ...   # ctx.session.generate / loglikelihood / capture / decode, then answer(...)

The runner and the report read the class attributes (``roles``, ``sweep``, ``private_context``)
and the methods below instead of switching on kinds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ...compute import Compute
from ...errors import InterventionError
from ...registry import Registry
from ...session import Session
from ...spec import to_dict
from ..tasks import Task, TaskItem, choice_accuracy


class UnknownProtocolError(InterventionError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Protocol(BaseModel):
    """Base of every protocol. Fields are the protocol's own parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ClassVar[str] = ""
    roles: ClassVar[tuple[str, ...]] = ("B",)    # the model roles its answer depends on (pairs sharing them share rows)
    sweep: ClassVar[tuple[str, ...]] = ()        # fields that form a grid (the report maps two of them)
    private_context: ClassVar[bool] = False      # only meaningful when A holds private information
    quiet_defaults: ClassVar[tuple[str, ...]] = ()   # fields recorded only when set (see as_dict)

    def needed_roles(self) -> tuple[str, ...]:
        return self.roles

    def applies_to(self, task: Task, pair: dict) -> bool:
        return task.info_split == "private_context" if self.private_context else True

    @property
    def name(self) -> str:
        """The label in tables: the kind, then each swept value."""
        return "_".join([self.kind, *(f"{axis}{fmt(getattr(self, axis))}" for axis in self.sweep)])

    @property
    def family(self) -> str:
        """The label without the swept values: rows of one sweep share it."""
        return self.kind

    def as_dict(self) -> dict:
        """Everything that defines this protocol, as plain data (recorded in every row). Fields in
        ``quiet_defaults`` appear only when set, so adding such a field keeps finished work keys."""
        dumped = self.model_dump(mode="json")
        for name in self.quiet_defaults:
            if getattr(self, name) == type(self).model_fields[name].default:
                del dumped[name]
        return {"kind": self.kind, **dumped}

    def identity(self) -> dict:
        """What the work key hashes; defaults to ``spec()``."""
        return self.as_dict()

    def params(self) -> dict:
        return {"family": self.family, "sweep": list(self.sweep), **{a: getattr(self, a) for a in self.sweep}}

    def run(self, ctx: "Context", items: list[TaskItem]) -> list["Outcome"]:
        raise NotImplementedError


PROTOCOLS: Registry[type[Protocol]] = Registry(
    "protocol", UnknownProtocolError,
    "Add one with @interventions.register_protocol(name) on a Protocol subclass, or @interventions.protocol(name) "
    "on a tracing function.")


def register_protocol(name: str):
    def decorate(cls: type[Protocol]) -> type[Protocol]:
        cls.kind = name
        PROTOCOLS.register(name, cls)
        return cls
    return decorate


@dataclass
class Outcome:
    score: float
    prediction: str
    compute: Compute
    score_norm: float | None = None
    extra: dict = field(default_factory=dict)
    interventions: list = field(default_factory=list)   # full specs that produced the answer
    raw: Any = None                                      # the text or the choice log-likelihoods


@dataclass
class Context:
    """What protocols share while one (model pair, task) is evaluated."""

    session: Session
    task: Task
    max_new_tokens: int = 16
    seed: int = 0
    pool: list = field(default_factory=list)   # the task's items in this run: partners for mismatched controls
    generation: dict = field(default_factory=dict)   # how answers are generated: {} greedy, else sampling kwargs

    def model(self, role: str):
        return self.session.model(role)

    def generation_for(self, role: str) -> dict:
        """How ``role`` generates: stop strings end the answers of a model prompted without a chat
        template (it would write the next question itself); a chat model ends its turn with EOS."""
        if "stop" in self.generation and self.model(role).has_chat_template:
            return {k: v for k, v in self.generation.items() if k != "stop"}
        return self.generation

    def sources(self, items: list[TaskItem], control: str) -> list[TaskItem]:
        """The items whose information a channel sends: another item's under the mismatched control."""
        return [self.partner(it) for it in items] if control == "mismatched" else items

    def partner(self, item: TaskItem) -> TaskItem:
        """Another item of the task, fixed per (item, seed), with a different gold answer when one exists."""
        others = [it for it in self.pool if it.id != item.id] or [item]
        different = [it for it in others if it.answer != item.answer] or others
        rank = lambda it: hashlib.sha256(f"{self.seed}:{item.id}:{it.id}".encode()).hexdigest()  # noqa: E731
        return min(different, key=rank)


def vector_control(control: str) -> str:
    """The session-level part of a control: mismatched swaps sources, so it sends real vectors."""
    return "none" if control == "mismatched" else control


def scored(task: Task, item: TaskItem, raw, compute: Compute) -> Outcome:
    """An answer (a text, or one log-likelihood per choice) scored as the task scores it."""
    if task.scoring == "choice_loglik":
        acc = choice_accuracy(raw, list(item.choices), item.answer_index)
        return Outcome(acc["acc"], item.choices[acc["pred"]], compute, acc["acc_norm"], raw=raw)
    parsed = task.parse(item, str(raw))
    return Outcome(float(task.score(item, raw)), str(raw).strip(), compute, raw=raw,
                   extra={"parsed": parsed} if parsed is not None else {})


def answer(ctx: Context, role: str, prompts, items: list[TaskItem], interventions=(),
           control: str = "none") -> list[Outcome]:
    """``role`` answers ``items`` (its prompts; a dict adds the prompts of roles the interventions
    read), by generation or by choice log-likelihoods as the task is scored, with compute charged."""
    task, session = ctx.task, ctx.session
    specs = [to_dict(spec) for spec in interventions]
    if task.scoring == "choice_loglik":
        result = session.loglikelihood(role, prompts, [it.choices for it in items], interventions, control)
        answers = result.logliks
    else:
        result = session.generate(role, prompts, interventions, ctx.max_new_tokens, control, **ctx.generation_for(role))
        answers = result.texts
    outcomes = [scored(task, item, raw, compute) for item, raw, compute in zip(items, answers, result.compute)]
    maps = [m.describe() for m in result.maps]
    for outcome, notes in zip(outcomes, getattr(result, "notes", None) or [{}] * len(outcomes)):
        outcome.interventions = specs
        outcome.extra.update(notes)
        if maps:
            outcome.extra["maps"] = maps
    return outcomes


def add_costs(outcomes: list[Outcome], costs: list[Compute]) -> list[Outcome]:
    for outcome, cost in zip(outcomes, costs):
        outcome.compute.merge(cost)
    return outcomes
