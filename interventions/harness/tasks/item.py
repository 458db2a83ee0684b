"""TaskItem: one question, as both agents see it, with its gold answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TaskItem:
    id: str  # stable across runs and seeds, e.g. "arc_easy/Mercury_7175875"
    question: str  # what the answering agent (B) sees; never contains the answer
    answer: str  # gold: text, number as string, or the gold choice text
    context: str = ""  # private information only agent A sees (coordination games)
    choices: tuple[str, ...] = ()  # choice texts; empty for free-form tasks
    answer_index: int | None = None  # index of the gold answer in choices
    # JSON-serialisable extras; excluded from hash so items stay usable as dict keys.
    meta: dict = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TaskItem":
        """Inverse of to_dict(), also after a JSON round trip (choices come back as a list)."""
        d = dict(d)
        d["choices"] = tuple(d.get("choices") or ())
        d["meta"] = dict(d.get("meta") or {})
        return cls(**d)
