"""``scenes/<kind>``: questions about seeded shape scenes (``interventions.vision.scenes``), one task per
question kind (shape, colour, count, position, size, yes_no), so every table reads per kind.

The evaluated pool is ``n_scenes`` scenes of seed 0; maps, projectors and probes fit on scenes of
another seed, with any scene whose objects equal an evaluated scene's left out. Each item's private
context is its full caption, so text channels can send it and ``skyline`` reads it.
"""

from __future__ import annotations

from functools import cached_property

from ...vision import scenes as sc
from .base import content_hash
from .errors import UnknownTaskError
from .images import CAPTION_DETAILS, FitExample, ImageTask
from .item import TaskItem
from .registry import register_task

KINDS = ("shape", "colour", "count", "position", "size", "yes_no")
CELLS = tuple(f"{r} {c}" for r in sc.ROWS for c in sc.COLUMNS)
EVAL_SEED, FIT_SEED = 0, 1
NONE = "none"


def scene_labels(scene: sc.Scene) -> dict:
    """Per quadrant: the shape, colour and size there, or "none"."""
    by_cell = {obj.position: obj for obj in scene.objects}
    labels = {}
    for cell in CELLS:
        obj = by_cell.get(cell)
        for attribute in ("shape", "colour", "size"):
            labels[f"{cell}:{attribute}"] = getattr(obj, attribute) if obj else NONE
    return labels


def scene_from_labels(labels: dict, scene_id: str = "predicted") -> sc.Scene:
    """The scene the labels describe; a quadrant counts as empty when any of its attributes says none."""
    objects = []
    for cell in CELLS:
        values = [labels.get(f"{cell}:{a}", NONE) for a in ("shape", "colour", "size")]
        if NONE not in values:
            row, column = cell.split()
            objects.append(sc.Shape(values[0], values[1], values[2], row, column))
    return sc.Scene(scene_id, tuple(objects))


def caption_text(scene: sc.Scene, detail: str) -> str:
    return sc.caption(scene, detail) if scene.objects else "No shapes."


class ScenesTask(ImageTask):
    source = "interventions.vision.scenes (seeded PIL scenes)"

    def __init__(self, kind: str, n_scenes: int = 300, image_size: int = 224, max_objects: int = 4):
        self.kind, self.n_scenes, self.image_size, self.max_objects = kind, n_scenes, image_size, max_objects
        self.name = f"scenes/{kind}"

    @cached_property
    def scenes(self) -> dict[str, sc.Scene]:
        return {s.id: s for s in sc.generate(self.n_scenes, EVAL_SEED, self.max_objects)}

    def all_items(self) -> list[TaskItem]:
        items = []
        for scene in self.scenes.values():
            q = next(q for q in sc.questions(scene) if q.kind == self.kind)
            items.append(TaskItem(
                id=f"{self.name}/{scene.id}-{content_hash(q.text, q.answer, n=6)}", question=q.text, answer=q.answer,
                context=caption_text(scene, "full"), choices=q.choices, answer_index=q.choices.index(q.answer),
                meta={"image_key": scene.id, "kind": q.kind, "caption_short": caption_text(scene, "short")}))
        return items

    def scene(self, item: TaskItem) -> sc.Scene:
        return self.scenes[self.image_key(item)]

    def image(self, item: TaskItem):
        return sc.render(self.scene(item), self.image_size)

    def caption(self, item: TaskItem, detail: str = "short") -> str:
        if detail not in CAPTION_DETAILS:
            raise ValueError(f"caption detail must be one of {', '.join(CAPTION_DETAILS)}; got {detail!r}")
        return caption_text(self.scene(item), detail)

    def fit_set(self, n: int) -> list[FitExample]:
        """``n`` scenes of another seed, none with the objects of an evaluated scene."""
        evaluated = {s.objects for s in self.scenes.values()}
        out, batch = [], 0
        while len(out) < n:
            for scene in sc.generate(2 * n, FIT_SEED + 1000 * batch, self.max_objects):
                if scene.objects not in evaluated and len(out) < n:
                    out.append(FitExample(f"fit-{scene.id}", sc.render(scene, self.image_size),
                                          caption_text(scene, "full"), scene_labels(scene)))
            batch += 1
        return out

    def fit_key(self, n: int) -> str:
        return f"scenes-seed{FIT_SEED}-n{n}-objects{self.max_objects}-px{self.image_size}-without{self.n_scenes}"

    def caption_from_labels(self, labels: dict, detail: str = "full") -> str:
        return caption_text(scene_from_labels(labels), detail)


@register_task("scenes/*", list_members=lambda: list(KINDS))
def scenes_task(kind: str, n_scenes: int = 300, image_size: int = 224, max_objects: int = 4) -> ScenesTask:
    if kind not in KINDS:
        raise UnknownTaskError(kind, list(KINDS), kind="scenes question kind")
    return ScenesTask(kind, n_scenes, image_size, max_objects)
