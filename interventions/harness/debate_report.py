"""Whose answer a debate settles on: how often its agents agree at the end, and how often its final
answer is what each model answers alone. A debate whose final answer is nearly always one model's
own is that model with extra steps, whatever its accuracy (the audit behind issue 9 found NL debate
returning the stronger sender's own answer on 45 of 50 items)."""

from __future__ import annotations

from ..errors import InterventionError
from .rows import grouped, kind_of, mean_of, model_pair, number_cell
from .tasks import get_task
from .tasks.scoring import answer_key


def _sample_key(row: dict) -> tuple:
    return str(row["item_id"]), (row.get("sampling") or {}).get("seed")


def _scoring(task: str) -> str:
    """How the task scores, for what counts as the same answer; a task this install does not know
    (a user's file task) compares normalised text."""
    try:
        return get_task(task).scoring
    except InterventionError:
        return "exact"


def _answer(row: dict, scoring: str) -> str:
    """The row's answer as a debate votes it: a generated number as a number, a pick as the option."""
    return answer_key(scoring, row["prediction"], (row.get("extra") or {}).get("parsed"))


def debate_agreement(rows: list[dict]) -> list[dict]:
    """Per task, model pair and debate protocol: agreement rate and the share of items whose final
    answer equals each role's answer alone (on the items and sampling seeds both have), answers
    compared as the debate votes them."""
    out = []
    for (task, pair), grp in grouped(rows, lambda r: (r["task"], model_pair(r))).items():
        scoring, alone = _scoring(task), {}
        for r in grp:
            if kind_of(r) == "single":
                alone.setdefault(r["protocol_spec"].get("role", "B"), {})[_sample_key(r)] = _answer(r, scoring)
        for protocol, prows in grouped([r for r in grp if kind_of(r) == "nl_debate"], lambda r: r["protocol"]).items():
            entry = {"task": task, "model_pair": pair, "protocol": protocol, "n": len(prows),
                     "agree": mean_of([float(bool((r.get("extra") or {}).get("agree"))) for r in prows])}
            for role in ("A", "B"):
                answers = alone.get(role, {})
                entry[f"same_as_{role}"] = mean_of([float(_answer(r, scoring) == answers[_sample_key(r)])
                                                    for r in prows if _sample_key(r) in answers])
            out.append(entry)
    return out


def debate_agreement_md(entries: list[dict]) -> list[str]:
    if not entries:
        return []
    lines = ["## Whose answer the debate returns", "",
             "The share of items where the debaters agree at the end, and where the debate's final answer is "
             "the one each model gives alone. Near 1.00 for one model, the debate is that model's own answer.", "",
             "| task | models | debate | n | agents agree | final = A alone | final = B alone |", "|" + "---|" * 7]
    for e in entries:
        shares = " | ".join(number_cell(e[name], ".2f") for name in ("agree", "same_as_A", "same_as_B"))
        lines.append(f"| {e['task']} | {e['model_pair']} | {e['protocol']} | {e['n']} | {shares} |")
    return lines + [""]
