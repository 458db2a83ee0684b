"""Images with known content: seeded scenes of shapes whose colour, size, position and count are
known exactly, so every question has a gold answer and every caption a chosen level of detail.

A ``Scene`` is data (objects with shape, colour, size, cell); ``render`` draws it with PIL;
``caption`` says it short ("a red circle") or in full (every object, its attributes and where it
is); ``questions`` asks about shape, colour, count, position, size and yes/no facts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
           "purple": (140, 60, 180), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.42}          # side of the shape's box, as a fraction of its cell
ROWS, COLUMNS = ("top", "bottom"), ("left", "right")
BACKGROUND = (255, 255, 255)
NUMBERS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    row: str       # top / bottom half of the image
    column: str    # left / right half

    @property
    def position(self) -> str:
        return f"{self.row} {self.column}"

    def words(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    id: str
    objects: tuple[Shape, ...]     # at most one per quadrant, no two of one shape and colour


@dataclass(frozen=True)
class Question:
    kind: str       # shape, colour, count, position, size, yes_no
    text: str
    answer: str
    choices: tuple[str, ...]


def generate(n: int, seed: int = 0, max_objects: int = 4) -> list[Scene]:
    """``n`` scenes of 1..max_objects shapes in distinct quadrants, the same for the same seed."""
    if not 1 <= max_objects <= 4:
        raise ValueError(f"max_objects must be 1..4 (one shape per quadrant), got {max_objects}")
    rng = random.Random(seed)
    cells = [(r, c) for r in ROWS for c in COLUMNS]
    scenes = []
    for index in range(n):
        count = rng.randint(1, max_objects)
        # distinct (shape, colour) within a scene, so "the red circle" names one object
        kinds = rng.sample([(shape, colour) for shape in SHAPES for colour in sorted(COLOURS)], count)
        places = sorted(rng.sample(cells, count), key=cells.index)
        objects = tuple(Shape(shape, colour, rng.choice(sorted(SIZES)), r, c)
                        for (shape, colour), (r, c) in zip(kinds, places))
        scenes.append(Scene(f"scene{seed}-{index}", objects))
    return scenes


def box(obj: Shape, image_size: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the shape, centred in its quadrant."""
    half = image_size / 2
    cx = half * (0.5 if obj.column == "left" else 1.5)
    cy = half * (0.5 if obj.row == "top" else 1.5)
    r = half * SIZES[obj.size]
    return cx - r, cy - r, cx + r, cy + r


def render(scene: Scene, image_size: int = 224):
    """An RGB PIL image of the scene on a white background."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = box(obj, image_size)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def caption(scene: Scene, detail: str = "short") -> str:
    """``short``: the first object's colour and shape ("a red circle"), which drops size, position and
    count; ``full``: every object with its attributes and position."""
    if detail == "short":
        first = scene.objects[0]
        return f"a {first.colour} {first.shape}"
    if detail == "full":
        parts = [f"{obj.words()} at the {obj.position}" for obj in scene.objects]
        return f"{NUMBERS[len(parts)].capitalize()} shape{'s' if len(parts) > 1 else ''}: " + "; ".join(parts) + "."
    raise ValueError(f"caption detail must be 'short' or 'full', got {detail!r}")


def questions(scene: Scene, seed: int = 0) -> list[Question]:
    """One question of each kind, answerable from the image alone, with its gold answer."""
    rng = random.Random(f"{seed}:{scene.id}")
    target = rng.choice(scene.objects)
    where = target.position
    present = {(o.shape, o.colour) for o in scene.objects}
    asked_shape, asked_colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
    return [
        Question("shape", f"What shape is at the {where}?", target.shape, SHAPES),
        Question("colour", f"What colour is the shape at the {where}?", target.colour, tuple(sorted(COLOURS))),
        Question("count", "How many shapes are there?", NUMBERS[len(scene.objects)], NUMBERS[1:]),
        Question("position", f"Where is the {target.colour} {target.shape}?", where,
                 tuple(f"{r} {c}" for r in ROWS for c in COLUMNS)),
        Question("size", f"Is the shape at the {where} small or large?", target.size, tuple(sorted(SIZES))),
        Question("yes_no", f"Is there a {asked_colour} {asked_shape}?",
                 "yes" if (asked_shape, asked_colour) in present else "no", ("yes", "no")),
    ]
