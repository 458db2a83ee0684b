"""`jsonl`: a task read from a user's JSON-lines file, one item per line.

Fields: question (str), answer (str or number), optional id, context (str), choices (list
of str, required for choice_loglik, and then answer must be one of them), meta (object).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import suggest
from .base import Task
from .errors import DatasetFormatError, TaskOptionError
from .item import TaskItem
from .registry import register_task
from .scoring import exact_match, first_line, numeric_match

JSONL_SCORINGS = ("exact", "numeric", "choice_loglik")
INSTRUCTIONS = {"numeric": "Answer with a number.", "exact": "Answer with the answer only."}


def _text(path, lineno, row, field, required):
    value = row.get(field)
    if value is None:
        if required:
            raise DatasetFormatError(path, lineno, field, "is missing")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and field in ("answer", "id"):
        return str(value)  # numbers are natural for numeric answers and ids
    if not isinstance(value, str):
        raise DatasetFormatError(path, lineno, field, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DatasetFormatError(path, lineno, field, "is empty")
    return value


def parse_line(path: str, lineno: int, line: str, scoring: str, stem: str) -> TaskItem:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(path, lineno, "<line>", f"is not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise DatasetFormatError(path, lineno, "<line>", "must be a JSON object")
    question = _text(path, lineno, row, "question", True)
    answer = _text(path, lineno, row, "answer", True)
    context = _text(path, lineno, row, "context", False)
    item_id = _text(path, lineno, row, "id", False) or str(lineno)
    choices = row.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise DatasetFormatError(path, lineno, "choices", "must be a list of non-empty strings")
    if scoring == "choice_loglik" and len(choices) < 2:
        raise DatasetFormatError(path, lineno, "choices", "needs at least 2 options for choice_loglik scoring")
    if choices and answer not in choices:
        raise DatasetFormatError(path, lineno, "answer", f"{answer!r} is not one of the choices")
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        raise DatasetFormatError(path, lineno, "meta", "must be a JSON object")
    return TaskItem(f"{stem}/{item_id}", question, answer, context=context, choices=tuple(choices),
                    answer_index=choices.index(answer) if choices else None,
                    meta={**meta, "line": lineno})


class JsonlTask(Task):
    def __init__(self, path: str | Path, scoring: str = "exact", name: str | None = None):
        if scoring not in JSONL_SCORINGS:
            raise TaskOptionError(f"jsonl scoring must be 'exact', 'numeric' or 'choice_loglik', got {scoring!r}."
                                  f"{suggest(str(scoring), JSONL_SCORINGS)}")
        self.path, self.scoring = Path(path), scoring
        if not self.path.is_file():
            raise TaskOptionError(f"jsonl task file not found: {self.path}")
        self.name = name or f"jsonl/{self.path.stem}"
        self.source = f"jsonl file {self.path}"
        self._items = self._load()  # parse now so format errors surface at get_task()
        self.info_split = "private_context" if any(it.context for it in self._items) else "shared_question"

    def _load(self) -> list[TaskItem]:
        items, seen = [], {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            item = parse_line(str(self.path), lineno, line, self.scoring, self.path.stem)
            if item.id in seen:
                raise DatasetFormatError(self.path, lineno, "id", f"duplicates the id on line {seen[item.id]}")
            seen[item.id] = lineno
            items.append(item)
        return items

    def all_items(self) -> list[TaskItem]:
        return list(self._items)

    def score(self, item: TaskItem, generated: str) -> float:
        if self.scoring == "numeric":
            return float(numeric_match(generated, item.answer))
        if self.scoring == "exact":  # first line only: models often explain after answering
            return float(exact_match(first_line(generated), item.answer))
        return super().score(item, generated)

    def answer_instruction(self) -> str:
        return INSTRUCTIONS.get(self.scoring, "")


register_task("jsonl")(JsonlTask)
