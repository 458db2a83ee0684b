"""Seeded scenes: the same seed gives the same scenes, the pixels show what the scene says, and
every question's gold answer follows from the scene."""

from __future__ import annotations

import pytest

from interventions.vision.scenes import COLOURS, NUMBERS, box, caption, generate, questions, render


def test_same_seed_same_scenes_other_seed_others():
    assert generate(20, seed=3) == generate(20, seed=3)
    assert generate(20, seed=3) != generate(20, seed=4)


def test_pixels_show_each_object_in_its_colour_at_its_place():
    for scene in generate(30, seed=1):
        image = render(scene, 224)
        assert image.size == (224, 224) and image.mode == "RGB"
        for obj in scene.objects:
            x0, y0, x1, y1 = box(obj, 224)
            # a point inside every shape (the triangle's too): the box centre, a little below the middle
            assert image.getpixel((int((x0 + x1) / 2), int(y0 + 0.6 * (y1 - y0)))) == COLOURS[obj.colour]
        # an empty quadrant stays white
        used = {(o.row, o.column) for o in scene.objects}
        for row, y in (("top", 56), ("bottom", 168)):
            for column, x in (("left", 56), ("right", 168)):
                if (row, column) not in used:
                    assert image.getpixel((x, y)) == (255, 255, 255)


def test_gold_answers_follow_from_the_scene():
    for scene in generate(50, seed=2):
        by_kind = {q.kind: q for q in questions(scene)}
        assert set(by_kind) == {"shape", "colour", "count", "position", "size", "yes_no"}
        assert by_kind["count"].answer == NUMBERS[len(scene.objects)]
        where = by_kind["shape"].text.removeprefix("What shape is at the ").removesuffix("?")
        (target,) = [o for o in scene.objects if o.position == where]
        assert (by_kind["shape"].answer, by_kind["colour"].answer, by_kind["size"].answer) == \
            (target.shape, target.colour, target.size)
        named = by_kind["position"].text.removeprefix("Where is the ").removesuffix("?").split()
        (placed,) = [o for o in scene.objects if [o.colour, o.shape] == named]
        assert by_kind["position"].answer == placed.position
        asked = by_kind["yes_no"].text.removeprefix("Is there a ").removesuffix("?").split()
        assert (by_kind["yes_no"].answer == "yes") == any([o.colour, o.shape] == asked for o in scene.objects)
        for q in by_kind.values():
            assert q.answer in q.choices


def test_captions_short_drops_what_full_keeps():
    scene = next(s for s in generate(50, seed=5) if len(s.objects) >= 3)
    short, full = caption(scene, "short"), caption(scene, "full")
    first = scene.objects[0]
    assert short == f"a {first.colour} {first.shape}"
    assert full.startswith(f"{NUMBERS[len(scene.objects)].capitalize()} shapes:")
    for obj in scene.objects:
        assert f"{obj.size} {obj.colour} {obj.shape} at the {obj.position}" in full
    with pytest.raises(ValueError, match="short' or 'full"):
        caption(scene, "medium")
