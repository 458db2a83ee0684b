"""``easy_vqa/<kind>``: easy-VQA's real 64×64 shape images and questions (package ``easy-vqa``, MIT),
one task per kind: ``shape`` (what is the red shape?), ``colour`` (what colour is the triangle?) and
``yes_no`` (is there a blue shape?). Evaluated items come from its test split; maps, projectors and
probes fit on its train split. Each image holds one shape, so its caption ("a red triangle") is both
short and full; it is read off the image's own shape and colour answers.

An image file that cannot be read is skipped when the items are listed, and recorded in ``skipped``.
"""

from __future__ import annotations

import warnings
from functools import cached_property

from ...vision.images import load_images
from .base import content_hash
from .errors import MissingDataPackageError, UnknownTaskError
from .images import FitExample, ImageTask
from .item import TaskItem
from .registry import register_task

SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
CHOICES = {"shape": SHAPES, "colour": COLOURS, "yes_no": ("yes", "no")}
INSTALL = "pip install easy-vqa==1.0"


def _package():
    try:
        import easy_vqa
    except ImportError:
        raise MissingDataPackageError(f"easy_vqa tasks need the easy-vqa package: {INSTALL}") from None
    return easy_vqa


def caption_of(labels: dict) -> str:
    """"a red triangle": one shape per image, so short and full captions are the same."""
    return " ".join(["a", *(labels[a] for a in ("colour", "shape") if a in labels)])


def question_kind(answer: str) -> str:
    return "shape" if answer in SHAPES else "colour" if answer in COLOURS else "yes_no"


class Split:
    """One easy-VQA split: questions grouped by image, each image's shape and colour, readable paths."""

    def __init__(self, name: str):
        package = _package()
        texts, answers, image_ids = getattr(package, f"get_{name}_questions")()
        paths = getattr(package, f"get_{name}_image_paths")()
        self.name, self.paths = name, paths
        self.questions = list(zip(texts, answers, image_ids))
        self.labels: dict[int, dict] = {}
        for _, answer, image in self.questions:
            kind = question_kind(answer)
            if kind != "yes_no":
                self.labels.setdefault(image, {})[kind] = answer
        self.skipped: list[dict] = []     # unreadable images, as load_images records them

    def caption(self, image: int) -> str:
        return caption_of(self.labels.get(image, {}))

    def described(self, image: int) -> bool:
        """Both the image's shape and colour are known (so its caption is complete)."""
        return len(self.labels.get(image, {})) == 2

    def check(self, images: list[int]) -> list[int]:
        """The images that can be read; the others are recorded in ``skipped`` with a warning."""
        loaded = load_images([self.paths[i] for i in images])
        for failure in loaded.failures:
            self.skipped.append({**failure, "image": images[failure["index"]]})
            warnings.warn(f"easy_vqa {self.name}: skipping unreadable image {failure['source']} ({failure['error']})",
                          stacklevel=3)
        return [images[i] for i in loaded.kept]


class EasyVQATask(ImageTask):
    source = "easy-vqa 1.0 (Zhou, 2020), test split"

    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"easy_vqa/{kind}"

    @cached_property
    def test(self) -> Split:
        return Split("test")

    @cached_property
    def train(self) -> Split:
        return Split("train")

    @property
    def skipped(self) -> list[dict]:
        return self.test.skipped

    def all_items(self) -> list[TaskItem]:
        split = self.test
        chosen = [(q, a, i) for q, a, i in split.questions if question_kind(a) == self.kind and split.described(i)]
        readable = set(split.check(sorted({i for _, _, i in chosen})))
        choices = CHOICES[self.kind]
        return [TaskItem(id=f"{self.name}/{i}-{content_hash(q, a)}", question=q[0].upper() + q[1:], answer=a,
                         context=split.caption(i), choices=choices, answer_index=choices.index(a),
                         meta={"image_key": f"easy_vqa-test-{i}", "image": i, "kind": self.kind,
                               "caption_short": split.caption(i)})
                for q, a, i in chosen if i in readable]

    def image(self, item: TaskItem):
        loaded = load_images([self.test.paths[item.meta["image"]]])
        if not loaded.images:
            raise FileNotFoundError(f"easy_vqa image {item.meta['image']}: {loaded.failures[0]['error']}")
        return loaded.images[0]

    def caption(self, item: TaskItem, detail: str = "short") -> str:
        return self.test.caption(item.meta["image"])

    def fit_set(self, n: int) -> list[FitExample]:
        split = self.train
        images = split.check(sorted(i for i in split.labels if split.described(i))[:n])
        loaded = load_images([split.paths[i] for i in images])
        return [FitExample(f"easy_vqa-train-{i}", image, split.caption(i), dict(split.labels[i]))
                for i, image in zip(images, loaded.images)]

    def fit_key(self, n: int) -> str:
        return f"easy_vqa-train-n{n}"

    def caption_from_labels(self, labels: dict, detail: str = "full") -> str:
        return caption_of(labels)


@register_task("easy_vqa/*", list_members=lambda: list(CHOICES))
def easy_vqa_task(kind: str) -> EasyVQATask:
    if kind not in CHOICES:
        raise UnknownTaskError(kind, list(CHOICES), kind="easy_vqa question kind")
    return EasyVQATask(kind)

