"""``nl_debate``: agents answer, then re-answer having read the others' last answers.

Two agents (A and B) settle as before: agreement wins, a split goes to the more confident agent on
a choice task, else to B. ``final: majority`` is the rule of Du et al. and Ramesh & Li: the answer
most agents give (with three agents, e.g. ``agents: [A, B, A]``; two copies of one model differ only
when the experiment samples, as each agent draws with its own seed); a vote with no majority falls
back to the tie-break above.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator

from ...compute import Compute
from ..prompts import answer_prompt, debate_note
from ..tasks.scoring import answer_key
from .base import Context, Outcome, Protocol, answer, register_protocol


def _confidence(logliks: list[float]) -> float:
    return float(torch.softmax(torch.tensor(logliks), dim=0).max())


def _final(chosen: Outcome, total: Compute, extra: dict) -> Outcome:
    """The debate's row: the chosen answer (with how it was parsed), charged every agent's compute."""
    parsed = {"parsed": chosen.extra["parsed"]} if "parsed" in chosen.extra else {}
    return Outcome(chosen.score, chosen.prediction, total, chosen.score_norm, {**parsed, **extra})


@register_protocol("nl_debate")
class NLDebate(Protocol):
    """Agents answer, read each other's answers and answer again; the last answers settle it by
    tie-break (two agents) or majority."""

    roles = ("A", "B")
    quiet_defaults = ("agents", "final")
    rounds: PositiveInt = 2
    agents: tuple[Literal["A", "B"], ...] = Field(("A", "B"), min_length=2, description="the models that debate, in order")
    final: Literal["tiebreak", "majority"] = "tiebreak"

    @model_validator(mode="after")
    def _settled(self):
        if self.final == "majority" and len(self.agents) < 3:
            raise ValueError("final: majority needs at least three agents (e.g. agents: [A, B, A]): two that "
                             "disagree have no majority")
        return self

    @property
    def name(self) -> str:
        extra = f"_{''.join(self.agents)}_majority" if self.final == "majority" else (
            f"_{''.join(self.agents)}" if self.agents != ("A", "B") else "")
        return f"nl_debate_r{self.rounds}{extra}"

    def _generation(self, ctx: Context, agent: int) -> dict:
        """Each agent samples with its own seed, so two copies of one model can disagree."""
        if not ctx.generation or agent == 0:
            return ctx.generation
        return {**ctx.generation, "seed": ctx.generation["seed"] + 7919 * agent}

    def run(self, ctx: Context, items):
        totals = [Compute() for _ in items]
        answers: list[list[Outcome]] = []
        for round_index in range(self.rounds):
            new_answers = []
            for k, role in enumerate(self.agents):
                prompts = [answer_prompt(ctx.model(role), ctx.task, item, note=debate_note(
                    *[answers[j][i].prediction for j in range(len(self.agents)) if j != k]) if round_index else "")
                           for i, item in enumerate(items)]
                new_answers.append(answer(replace(ctx, generation=self._generation(ctx, k)), role, prompts, items))
                for total, outcome in zip(totals, new_answers[-1]):
                    total.merge(outcome.compute)
            answers = new_answers
        return [self._settle(ctx, [agent[i] for agent in answers], totals[i]) for i in range(len(items))]

    def _settle(self, ctx: Context, last: list[Outcome], total: Compute) -> Outcome:
        keys = [answer_key(ctx.task.scoring, o.prediction, o.extra.get("parsed")) for o in last]
        votes = Counter(keys).most_common()
        extra = {"agree": len(votes) == 1}
        if self.final == "majority":
            extra["votes"] = dict(votes)
            if votes[0][1] > len(last) / 2:
                return _final(last[keys.index(votes[0][0])], total, extra)
        a, b = last[0], last[1]          # two agents, or a vote with no majority: the tie-break
        chosen = b
        if ctx.task.scoring == "choice_loglik" and a.prediction != b.prediction:
            chosen = max((a, b), key=lambda ans: _confidence(ans.raw))
        return _final(chosen, total, extra)
