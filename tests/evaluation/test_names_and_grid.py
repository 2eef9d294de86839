"""Concept names (the space/underscore pitfall), judge class matching and the grid of prompts."""

from __future__ import annotations

import pytest
import torch

from hirm.evaluation.canvas_grid import Canvas, UnknownConceptError, build_items
from hirm.evaluation.common import EvaluationInputError, concept_key, display_name
from hirm.evaluation.judges import (
    FunctionJudge,
    Judge,
    JudgeMismatchError,
    class_columns,
    judge_probabilities,
)


@pytest.mark.parametrize("name", ["Van Gogh", "Van_Gogh", "van gogh", " VAN   GOGH ", "van__gogh"])
def test_concept_key_normalises_spelling(name):
    assert concept_key(name) == "van_gogh"


def test_canonical_and_display(canvas):
    assert canvas.canonical("van gogh") == "Van_Gogh" == canvas.canonical("Van_Gogh")
    assert canvas.domain("VAN GOGH") == "style" and canvas.domain("cats") == "object"
    assert display_name("Van_Gogh") == "Van Gogh"
    with pytest.raises(UnknownConceptError, match="Styles: Van_Gogh, Crayon"):
        canvas.canonical("Monet")


def test_canvas_rejects_colliding_names():
    with pytest.raises(EvaluationInputError):
        Canvas(("Van_Gogh", "Van Gogh"), ("Cats",))


def test_prompts_use_spaces(canvas):
    assert (
        canvas.prompt("A {object} image in {style} style.", style="Van_Gogh", object="Cats")
        == "A Cats image in Van Gogh style."
    )
    assert canvas.prompt("{style_super} of {object}", style="Crayon", object="Dogs") == "drawing of Dogs"
    with pytest.raises(EvaluationInputError):
        canvas.prompt("{object} in {style}", object="Cats")


def test_build_items_full_and_target(canvas):
    kwargs = dict(
        templates=("A {object} image in {style} style.",),
        heldout_templates=("{object}, {style}", "Artwork in {style} style."),
        super_templates=("A {object} ({object_super}) image.",),
        seeds=(1, 2),
    )
    full = build_items(canvas, **kwargs)
    by_split = {s: [i for i in full if i.split == s] for s in ("grid", "heldout", "super")}
    assert len(by_split["grid"]) == 2 * 2 * 2
    assert len(by_split["heldout"]) == 2 * 2 * 2 + 2 * 2
    assert len(by_split["super"]) == 2 * 2
    tgt = build_items(canvas, target="van gogh", **kwargs)
    held = [i for i in tgt if i.split == "heldout"]
    assert {i.style for i in held} == {"Van_Gogh"} and len(held) == 2 * 2 + 2
    assert [i for i in tgt if i.split == "super"] == []  # the super template does not name a style
    assert len([i for i in tgt if i.split == "grid"]) == 8  # the grid is always complete
    obj = build_items(canvas, target="Cats", **kwargs)
    assert {i.object for i in obj if i.split != "grid"} == {"Cats"}


def test_build_items_errors(canvas):
    with pytest.raises(EvaluationInputError):
        build_items(canvas, templates=("A {object} image.",), seeds=(1,))
    with pytest.raises(EvaluationInputError):
        build_items(canvas, templates=("A {object} image in {style} style.",), seeds=())
    with pytest.raises(UnknownConceptError):
        build_items(canvas, templates=("A {object} image in {style} style.",), seeds=(1,), target="Monet")


def test_class_columns_match_any_spelling(judges):
    assert isinstance(judges["style"], Judge)
    assert class_columns(judges["style"], ["Crayon", "Van_Gogh"]) == [1, 0]
    with pytest.raises(JudgeMismatchError, match="cannot recognise"):
        class_columns(judges["style"], ["Van_Gogh", "Pastel"])
    dup = FunctionJudge(("Van Gogh", "van_gogh"), lambda x: x)
    with pytest.raises(JudgeMismatchError, match="duplicates"):
        class_columns(dup, ["Van_Gogh"])


def test_judge_output_shape_is_checked():
    import numpy as np

    bad = FunctionJudge(("a", "b", "c"), lambda x: torch.zeros(len(x), 2))
    with pytest.raises(JudgeMismatchError, match="expected"):
        judge_probabilities(bad, np.zeros((3, 4, 4, 3), np.uint8))


def test_world_names_agree_with_harness():
    world = pytest.importorskip("hirm.world")
    if not hasattr(world, "STYLES") or not hasattr(world, "make_prompt"):
        pytest.skip("hirm.world is not shipped yet")
    canvas = Canvas.from_world()
    for s in world.STYLES:
        for o in world.OBJECTS[:3]:
            for template in (world.CANVAS_TEMPLATE, *world.HELDOUT_TEMPLATES):
                assert canvas.prompt(template, style=s, object=o) == world.make_prompt(
                    template, style=s, object=o
                )
        assert canvas.canonical(world.display_name(s)) == world.canonical_name(s) == s
