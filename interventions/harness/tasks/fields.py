"""Which column holds what: a user task's field mapping, and one record read into a TaskItem.

``fields: {question: q, answer: a, choices: [c1, c2, c3], context: passage, id: qid}`` maps each
role to a column. Unmapped roles read the column of their own name when it exists; ``choices`` is
one list-valued column or several text columns. With choices, the answer may be the choice's
text, its letter (``B``) or a 0-based integer index (``answer_is`` says which when it is not clear).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import suggest
from .errors import DatasetFormatError, TaskOptionError
from .item import TaskItem
from .records import Record, Records

ROLES = ("question", "answer", "choices", "context", "id", "meta")
REQUIRED = ("question", "answer")
ANSWER_FORMS = ("auto", "text", "letter", "index")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class FieldMap:
    question: str = "question"
    answer: str = "answer"
    choices: str | tuple[str, ...] = "choices"
    context: str = "context"
    id: str = "id"
    meta: str = "meta"
    mapped: frozenset = field(default=frozenset())   # roles named in ``fields``: their columns must exist

    @classmethod
    def of(cls, fields: dict | None, task: str) -> "FieldMap":
        if not isinstance(fields, (dict, type(None))):
            raise TaskOptionError(f"task {task!r}: fields must map roles to column names, e.g. "
                                  "{question: q, answer: a, choices: [c1, c2, c3]}")
        fields = dict(fields or {})
        for role, column in fields.items():
            if role not in ROLES:
                raise TaskOptionError(f"task {task!r}: fields has no role {role!r}.{suggest(str(role), ROLES)} "
                                      f"Roles: {', '.join(ROLES)}.")
            several = role == "choices" and isinstance(column, list)
            names = column if several else [column]
            if not names or not all(isinstance(n, str) and n for n in names):
                shape = "a column name, or a list of column names" if role == "choices" else "a column name"
                raise TaskOptionError(f"task {task!r}: fields.{role} must be {shape}, got {column!r}")
            if several:
                fields[role] = tuple(column)
        return cls(**fields, mapped=frozenset(fields))

    def columns(self, role: str) -> tuple[str, ...]:
        value = getattr(self, role)
        return value if isinstance(value, tuple) else (value,)

    def check_columns(self, records: Records) -> None:
        """A table must hold every column the mapping names, and the required roles' (a line-based
        file is checked per line)."""
        if records.columns is None:
            return
        known = ", ".join(records.columns)
        for role in [r for r in ROLES if r in self.mapped or r in REQUIRED]:
            for column in self.columns(role):
                if column in records.columns:
                    continue
                if role not in self.mapped:
                    raise TaskOptionError(f"{records.label} has no column {column!r} for the {role}: name the one "
                                          f"that holds it with fields: {{{role}: ...}}. Its columns: {known}.")
                raise TaskOptionError(f"{records.label} has no column {column!r} (fields.{role})."
                                      f"{suggest(column, records.columns)} Its columns: {known}.")


@dataclass(frozen=True)
class RecordReader:
    """Reads records of one source into TaskItems, naming the record and field of any problem."""

    fields: FieldMap
    records: Records
    base: str                 # item ids are "<base>/<id or number>"
    answer_is: str = "auto"

    def item(self, record: Record) -> TaskItem:
        values, number = record.values, record.number
        question = self._text(record, "question", True)
        answer = self._text(record, "answer", True, raw=True)
        context = self._text(record, "context", False)
        item_id = self._text(record, "id", False) or str(number)
        choices = self._choices(record)
        meta = values.get(self.fields.meta) or {}
        if not isinstance(meta, dict):
            raise self._error(record, self.fields.meta, "must be a JSON object", "meta")
        meta = {**meta, self.records.unit: number}
        index = None
        if choices:
            index, form = self._answer_index(record, answer, choices)
            if form != "text":
                meta["answer_given"] = answer   # a letter or an index; the gold below is the choice's text
            answer = choices[index]
        else:
            answer = self._as_text(record, "answer", answer)
        return TaskItem(f"{self.base}/{item_id}", question, answer, context=context, choices=tuple(choices),
                        answer_index=index, meta=meta)

    def error(self, item: TaskItem, role: str, problem: str) -> DatasetFormatError:
        """An error about an item read earlier, located at its record."""
        number = item.meta[self.records.unit]
        return self._error(Record(number, {}), self.fields.columns(role)[0], problem, role)

    # ------------------------------------------------------------ one field

    def _error(self, record: Record, column: str, problem: str, role: str) -> DatasetFormatError:
        return DatasetFormatError(self.records.label, record.number, column, problem, self.records.unit, role)

    def _text(self, record: Record, role: str, required: bool, raw: bool = False):
        column = self.fields.columns(role)[0]
        value = record.values.get(column)
        if value is None:
            if required or (role in self.fields.mapped and self.records.columns is None):
                raise self._error(record, column, "is missing", role)
            return ""
        if raw:
            return value
        return self._as_text(record, role, value)

    def _as_text(self, record: Record, role: str, value) -> str:
        column = self.fields.columns(role)[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and role in ("answer", "id"):
            return str(value)  # numbers are natural for numeric answers and ids
        if not isinstance(value, str):
            raise self._error(record, column, f"must be a string, got {type(value).__name__}", role)
        if role in ("question", "answer") and not value.strip():
            raise self._error(record, column, "is empty", role)
        return value

    def _choices(self, record: Record) -> list[str]:
        columns = self.fields.columns("choices")
        if len(columns) == 1:
            value = record.values.get(columns[0])
            if value is None:
                if "choices" in self.fields.mapped and self.records.columns is None:
                    raise self._error(record, columns[0], "is missing", "choices")
                return []
            if not isinstance(value, list) or not all(_is_choice(c) for c in value):
                hint = (" (in a table, map one column per choice: fields: {choices: [c1, c2, c3]})"
                        if isinstance(value, str) else "")
                raise self._error(record, columns[0], f"must be a list of non-empty strings{hint}", "choices")
            return [str(c) for c in value]
        cells = [record.values.get(column) for column in columns]
        while cells and (cells[-1] is None or cells[-1] == ""):   # items may have fewer choices than columns
            cells.pop()
        for column, cell in zip(columns, cells):
            if not _is_choice(cell):
                problem = "is missing" if cell in (None, "") else f"must be a string, got {type(cell).__name__}"
                raise self._error(record, column, f"{problem} (a choice before the last one given)", "choices")
        return [str(c) for c in cells]

    def _answer_index(self, record: Record, answer, choices: list[str]) -> tuple[int, str]:
        """(index of the gold choice, the form the answer was given in)."""
        # auto takes integers as indices, never digit strings: ARC's answer keys "1"-"4" count from 1
        forms = {"text": _as_choice_text, "letter": _as_letter,
                 "index": lambda a, c: _as_index(a, c, digits=self.answer_is == "index")}
        wanted = forms if self.answer_is == "auto" else {self.answer_is: forms[self.answer_is]}
        found = {form: read(answer, choices) for form, read in wanted.items()}
        found = {form: index for form, index in found.items() if index is not None}
        if len(set(found.values())) > 1:
            readings = ", ".join(f"as {form} choice {index} ({choices[index]!r})" for form, index in found.items())
            raise self._error(record, self.fields.answer, f"is {answer!r}, which reads two ways: {readings}. "
                              f"Set answer_is: {' or '.join(found)} in the task's options", "answer")
        if not found:
            allowed = {"text": "one of the choices", "letter": f"a letter A-{LETTERS[min(len(choices), 26) - 1]}",
                       "index": f"a 0-based index 0-{len(choices) - 1}"}
            expected = " nor ".join(allowed[form] for form in wanted)
            hint = (" (digits count as a 0-based index with answer_is: index in the task's options)"
                    if self.answer_is == "auto" and str(answer).strip().isdigit() else "")
            raise self._error(record, self.fields.answer, f"is {answer!r}: neither {expected}{hint}"
                              if len(wanted) > 1 else f"is {answer!r}, not {expected}", "answer")
        form, index = next(iter(found.items()))
        return index, form


def _is_choice(value) -> bool:
    return (isinstance(value, str) and bool(value.strip())) or (
        isinstance(value, (int, float)) and not isinstance(value, bool))


def _as_choice_text(answer, choices: list[str]) -> int | None:
    text = str(answer) if isinstance(answer, (str, int, float)) and not isinstance(answer, bool) else None
    return choices.index(text) if text in choices else None


def _as_letter(answer, choices: list[str]) -> int | None:
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip() in LETTERS[:len(choices)]:
        return LETTERS.index(answer.strip())
    return None


def _as_index(answer, choices: list[str], digits: bool) -> int | None:
    """An integer (as datasets' ClassLabel columns hold), or with ``digits`` its digits; 0-based."""
    if isinstance(answer, bool):
        return None
    if digits and isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer.strip())
    return answer if isinstance(answer, int) and 0 <= answer < len(choices) else None
