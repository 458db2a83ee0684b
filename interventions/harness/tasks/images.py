"""Tasks whose items come with an image that only the vision side sees.

An ``ImageTask`` answers ``image(item)`` and ``caption(item, detail)`` for its evaluated items, and
gives a disjoint ``fit_set`` of (image, full caption, attribute labels) for fitting maps, training
projectors and probes, so nothing that shapes a channel is ever evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Task
from .item import TaskItem

CAPTION_DETAILS = ("short", "full")


@dataclass(frozen=True)
class FitExample:
    key: str                  # stable id of the image (cache key of its features)
    image: object             # RGB PIL image
    caption: str              # the full ground-truth caption
    labels: dict = field(default_factory=dict)   # attribute -> value, for caption probes


class ImageTask(Task):
    """A task whose items carry an image (the private context of the vision side)."""

    info_split = "private_context"
    scoring = "choice_loglik"

    def image(self, item: TaskItem):
        raise NotImplementedError

    def image_key(self, item: TaskItem) -> str:
        """Items about one image share its key, so its features are computed once."""
        return item.meta["image_key"]

    def caption(self, item: TaskItem, detail: str = "short") -> str:
        raise NotImplementedError

    def fit_set(self, n: int) -> list[FitExample]:
        raise NotImplementedError

    def fit_key(self, n: int) -> str:
        """Names the fit set of size ``n``: what fitted maps, probes and projectors are cached under."""
        raise NotImplementedError

    def caption_from_labels(self, labels: dict, detail: str = "full") -> str:
        """The caption template filled with (predicted) attribute labels."""
        raise NotImplementedError
