"""Tasks on the user's own data: ``file`` (JSON, JSON Lines, CSV/TSV, Parquet) and ``hf`` (a
Hugging Face dataset), read into items through a field mapping.

    {name: file, options: {path: data/my.csv, fields: {question: q, answer: a, choices: [c1, c2, c3]}}}
    {name: hf, options: {dataset: cais/mmlu, config: astronomy, split: test, fields: {answer: answer}}}

Scoring follows the data unless declared: items with choices are scored as multiple choice by
log-likelihood (``choice_loglik``), items without by numeric match when every answer is a number,
else by exact match of the first line. A declared scoring the data cannot support is an error
naming the row and the fix, never a silent zero. The prompts are the built-in tasks' own
(``harness.prompts``), so both roles read the same question text.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import suggest
from .base import Task
from .errors import TaskOptionError
from .fields import ANSWER_FORMS, FieldMap, RecordReader
from .item import TaskItem
from .records import Records, file_format, read_file, read_hub
from .registry import register_task
from .scoring import exact_match, first_line, is_number, numeric_match

USER_SCORINGS = ("exact", "numeric", "choice_loglik")
INSTRUCTIONS = {"numeric": "Answer with a number.", "exact": "Answer with the answer only."}


class UserDataTask(Task):
    """Items read from records through a field mapping; scoring declared or inferred from them."""

    def __init__(self, records: Records, fields: FieldMap, name: str, base: str, scoring: str | None = None,
                 answer_is: str = "auto"):
        if scoring is not None and scoring not in USER_SCORINGS:
            raise TaskOptionError(f"task {name!r}: scoring must be one of {', '.join(USER_SCORINGS)} (or left out, "
                                  f"to follow the data), got {scoring!r}.{suggest(str(scoring), USER_SCORINGS)}")
        if answer_is not in ANSWER_FORMS:
            raise TaskOptionError(f"task {name!r}: answer_is must be one of {', '.join(ANSWER_FORMS)}, got "
                                  f"{answer_is!r}.{suggest(str(answer_is), ANSWER_FORMS)}")
        if not records.rows:
            raise TaskOptionError(f"{records.label} holds no items")
        fields.check_columns(records)
        reader = RecordReader(fields, records, base, answer_is)
        self.name, self.source = name, records.source
        self._items = self._read(reader)
        self.scoring = settle_scoring(self._items, scoring, reader)
        self.info_split = "private_context" if any(it.context for it in self._items) else "shared_question"

    def _read(self, reader: RecordReader) -> list[TaskItem]:
        items, seen = [], {}
        for record in reader.records.rows:
            item = reader.item(record)
            if item.id in seen:
                raise reader.error(item, "id", f"duplicates the id of {reader.records.unit} {seen[item.id]}")
            seen[item.id] = record.number
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


def settle_scoring(items: list[TaskItem], declared: str | None, reader: RecordReader) -> str:
    """The declared scoring once the items are checked to support it, or the one they call for."""
    with_choices = [it for it in items if it.choices]
    if declared == "choice_loglik" or (declared is None and with_choices):
        for item in items:
            if len(item.choices) < 2:
                fix = ("give every row its choices" if with_choices else
                       "map the choice columns with fields: {choices: [...]}") + ", or set scoring: exact"
                raise reader.error(item, "choices", f"needs at least 2 options for choice_loglik scoring; {fix}")
        return "choice_loglik"
    if declared is None:
        return "numeric" if all(is_number(it.answer) for it in items) else "exact"
    for item in items:
        if "answer_given" in item.meta:
            raise reader.error(item, "answer", f"{item.meta['answer_given']!r} names a choice by position, but "
                               f"{declared} scoring compares the generated text with the choice's text, and the "
                               "answering model's prompt does not list the choices. Leave scoring out (multiple "
                               "choice by log-likelihood), or give each answer as text")
    return declared


@register_task("file")
def file_task(path: str, fields: dict | None = None, format: str | None = None, scoring: str | None = None,
              answer_is: str = "auto", name: str | None = None) -> UserDataTask:
    """A JSON, JSON Lines, CSV/TSV or Parquet file (format from the extension, or ``format:``)."""
    path = Path(path)
    records = read_file(path, format)
    fmt = file_format(path, format)
    return UserDataTask(records, FieldMap.of(fields, "file"), name or f"{fmt}/{path.stem}", path.stem, scoring,
                        answer_is)


@register_task("hf")
def hub_task(dataset: str, split: str = "test", config: str | None = None, fields: dict | None = None,
             scoring: str | None = None, answer_is: str = "auto", revision: str | None = None,
             name: str | None = None) -> UserDataTask:
    """One split of a Hugging Face dataset (needs HF_HUB_OFFLINE=0 unless it is cached or local)."""
    records = read_hub(dataset, split, config, revision)
    default = f"hf/{dataset}" + (f"/{config}" if config else "") + f"/{split}"
    return UserDataTask(records, FieldMap.of(fields, "hf"), name or default, split, scoring, answer_is)

