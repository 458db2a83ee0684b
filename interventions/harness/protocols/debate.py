"""``nl_debate``: two agents answer, then re-answer having read each other's last answer."""

from __future__ import annotations

import torch
from pydantic import PositiveInt

from ...compute import Compute
from ..prompts import answer_prompt, debate_note
from .base import Context, Outcome, Protocol, answer, register_protocol


def _confidence(logliks: list[float]) -> float:
    return float(torch.softmax(torch.tensor(logliks), dim=0).max())


@register_protocol("nl_debate")
class NLDebate(Protocol):
    """Agreement wins; a split goes to the more confident agent (choice tasks) or to B."""

    roles = ("A", "B")
    rounds: PositiveInt = 2

    @property
    def name(self) -> str:
        return f"nl_debate_r{self.rounds}"

    def run(self, ctx: Context, items):
        totals = [Compute() for _ in items]
        answers: dict[str, list[Outcome]] = {}
        for round_index in range(self.rounds):
            new_answers = {}
            for role, other in (("A", "B"), ("B", "A")):
                prompts = [answer_prompt(ctx.model(role), ctx.task, item,
                                         note=debate_note(answers[other][i].prediction) if round_index else "")
                           for i, item in enumerate(items)]
                new_answers[role] = answer(ctx, role, prompts, items)
                for total, outcome in zip(totals, new_answers[role]):
                    total.merge(outcome.compute)
            answers = new_answers
        final = []
        for i in range(len(items)):
            a, b = answers["A"][i], answers["B"][i]
            chosen = b
            if ctx.task.scoring == "choice_loglik" and a.prediction != b.prediction:
                chosen = max((a, b), key=lambda ans: _confidence(ans.raw))
            final.append(Outcome(chosen.score, chosen.prediction, totals[i], chosen.score_norm,
                                 {"agree": a.prediction == b.prediction}))
        return final
