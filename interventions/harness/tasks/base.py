"""Task base class: the shared items()/score() contract every task implements."""

from __future__ import annotations

import hashlib
import random

from .errors import ScoringModeError
from .item import TaskItem

SCORINGS = ("choice_loglik", "exact", "numeric", "generator")
INFO_SPLITS = ("private_context", "shared_question")


def content_hash(*parts: str, n: int = 8) -> str:
    """Short seed-free hash of an item's content, so ids survive reordering."""
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:n]


def shuffled_prefix(pool: list, n: int | None, seed: int) -> list:
    """Shuffle a copy with `seed` and keep the first n: items(n, s) is a prefix of items(n+k, s)."""
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    pool = list(pool)
    random.Random(seed).shuffle(pool)
    return pool if n is None else pool[:n]


class Task:
    """A named evaluation task. Subclasses set the class attributes and implement all_items().

    items(n=None) returns every item for data-backed tasks; procedural tasks have no
    "all", so for them n=None means `default_n` items.
    """

    name: str = ""
    scoring: str = "exact"  # one of SCORINGS
    info_split: str = "shared_question"  # one of INFO_SPLITS
    source: str = ""
    default_n: int | None = None

    @property
    def generated(self) -> bool:
        """Answers are generated text, read by parsing (not log-likelihoods of the choices)."""
        return self.scoring != "choice_loglik"

    def all_items(self) -> list[TaskItem]:
        """Every item in canonical (file or enumeration) order."""
        raise NotImplementedError

    def items(self, n: int | None = None, seed: int = 0) -> list[TaskItem]:
        return shuffled_prefix(self.all_items(), self.default_n if n is None else n, seed)

    def score(self, item: TaskItem, generated: str) -> float:
        raise ScoringModeError(
            f"Task {self.name!r} is scored by choice log-likelihoods, not generations; "
            "score the choices with scoring.choice_accuracy()."
        )

    def parse(self, item: TaskItem, generated: str) -> dict | None:
        """How a generation was read, recorded in its row (``single_choice`` for a "choose one of"
        task, so the report can count answers with no valid choice); None when there is nothing to say."""
        return None

    def answer_instruction(self) -> str:
        return ""

    def chance(self, item: TaskItem) -> float | None:
        """The expected score of a uniform guess among the item's choices; None for free-form answers."""
        return 1 / len(item.choices) if item.choices else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} scoring={self.scoring} source={self.source!r}>"
