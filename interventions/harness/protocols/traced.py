"""Tracing functions as protocols: ``@interventions.protocol("name")``.

    @iv.protocol("mean_diff_steer", roles=("A", "B"))
    def mean_diff_steer(session, batch, *, layer: int = 8, scale: float = 4.0):
        ...   # nnsight / TransformerLens / plain torch on session.model("B").hf, etc.
        return answers   # one text per item, or one list of choice log-likelihoods per item

The function receives the ``Session`` (its models, backend, requests) and a ``Batch`` of items
with the prompts the harness would use. Its keyword-only parameters, with their type hints and
defaults, become the protocol's typed fields (sweepable in experiment files and recorded in
every row). Answers are scored by the task; forwards of the session's models are metered for
compute (tokens and analytic FLOPs, shared equally among the batch's items), plus wall time.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from pydantic import create_model

from ...compute import Compute
from ...errors import InterventionError
from ...meter import metered
from ..prompts import answer_prompt, sender_prompt
from ..tasks import Task, TaskItem
from .base import Context, Protocol, register_protocol, scored


class TracingResultError(InterventionError, ValueError):
    pass


@dataclass
class Batch:
    """What a tracing function answers: the items and the prompts the harness would give each role."""

    items: list[TaskItem]
    task: Task
    prompts: dict[str, list[str]]     # B: its answer prompts; A: what a sender reads (context or question)

    @property
    def choices(self) -> list[tuple[str, ...]]:
        return [it.choices for it in self.items]

    @property
    def scored_by_choices(self) -> bool:
        return self.task.scoring == "choice_loglik"


class TracedProtocol(Protocol):
    function: ClassVar[Callable[..., Any]]

    def run(self, ctx: Context, items):
        prompts = {"B": [answer_prompt(ctx.model("B"), ctx.task, it) for it in items]}
        if "A" in self.roles:
            prompts["A"] = [sender_prompt(ctx.model("A"), ctx.task, it) for it in items]
        batch = Batch(items, ctx.task, prompts)
        start = time.perf_counter()
        with metered(ctx.session) as total:
            answers = type(self).function(ctx.session, batch, **self.model_dump())
        elapsed = time.perf_counter() - start
        answers = self._checked(answers, batch)
        share = len(items)  # the batch's metered cost, split evenly among its items
        return [scored(ctx.task, item, ans, Compute(tokens={r: n // share for r, n in total.tokens.items()},
                                                    flops=total.flops / share, wall_s=elapsed / share,
                                                    role_flops={r: f / share for r, f in total.role_flops.items()}))
                for item, ans in zip(items, answers)]

    def _checked(self, answers, batch: Batch) -> list:
        where = f"tracing function {self.kind!r}"
        expected = ("one list of choice log-likelihoods per item" if batch.scored_by_choices
                    else "one answer text per item")
        if not isinstance(answers, (list, tuple)) or len(answers) != len(batch.items):
            got = f"{len(answers)} values" if isinstance(answers, (list, tuple)) else type(answers).__name__
            raise TracingResultError(f"{where} returned {got} for {len(batch.items)} items; expected {expected}")
        for i, (ans, item) in enumerate(zip(answers, batch.items)):
            if batch.scored_by_choices:
                if not isinstance(ans, (list, tuple)) or len(ans) != len(item.choices):
                    raise TracingResultError(f"{where}: item {i} ({item.id}) has {len(item.choices)} choices; "
                                             f"expected {len(item.choices)} log-likelihoods, got {ans!r}")
            elif not isinstance(ans, str):
                raise TracingResultError(f"{where}: item {i} ({item.id}): expected a text answer, "
                                         f"got {type(ans).__name__}")
        return [list(map(float, a)) for a in answers] if batch.scored_by_choices else list(answers)


def protocol(name: str, roles: tuple[str, ...] = ("A", "B"), private_context: bool = False,
             sweep: tuple[str, ...] = ()):
    """Register a tracing function ``fn(session, batch, *, **params)`` as a protocol named ``name``."""

    def decorate(fn: Callable) -> Callable:
        fields = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind is inspect.Parameter.KEYWORD_ONLY:
                hint = param.annotation if param.annotation is not inspect.Parameter.empty else Any
                fields[param.name] = (hint, ... if param.default is inspect.Parameter.empty else param.default)
        cls = create_model(f"Traced_{name}", __base__=TracedProtocol, __doc__=fn.__doc__, **fields)
        cls.function = staticmethod(fn)
        cls.roles, cls.private_context, cls.sweep = tuple(roles), private_context, tuple(sweep)
        cls.__module__ = fn.__module__
        cls.__qualname__ = fn.__qualname__
        register_protocol(name)(cls)
        return fn

    return decorate
