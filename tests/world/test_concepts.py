"""Names, super-categories, templates and prompt helpers."""

from __future__ import annotations

import pytest

import hirm.world as w
from hirm.world.captions import all_captions, sample_caption, template_kind


def test_world_size() -> None:
    assert len(w.STYLES) >= 12 and len(w.OBJECTS) >= 10
    assert set(w.STYLE_SUPER) == set(w.STYLES) and set(w.OBJECT_SUPER) == set(w.OBJECTS)


@pytest.mark.parametrize("name", ["Neon_Lines", "neon lines", "NEON  LINES", " neon_lines "])
def test_canonical_name_any_spelling(name: str) -> None:
    assert w.canonical_name(name) == "Neon_Lines"
    assert w.display_name(name) == "Neon Lines"


def test_canonical_name_unknown_lists_names() -> None:
    with pytest.raises(ValueError, match="Pop_Art"):
        w.canonical_name("Van Gogh")


def test_make_prompt_uses_spaces() -> None:
    assert (
        w.make_prompt(w.CANVAS_TEMPLATE, style="On_Fire", object="cats") == "A Cats image in On Fire style."
    )
    assert w.make_prompt("{object}", object="Birds") == "Birds"
    with pytest.raises(ValueError, match="needs style"):
        w.make_prompt(w.CANVAS_TEMPLATE, object="Birds")


def test_template_split() -> None:
    assert w.CANVAS_TEMPLATE in w.TRAIN_TEMPLATES
    assert not set(w.TRAIN_TEMPLATES) & set(w.HELDOUT_TEMPLATES)
    assert len(w.grid_templates(w.HELDOUT_TEMPLATES)) >= 3
    kinds = {template_kind(t) for t in w.TRAIN_TEMPLATES}
    assert kinds == {"both", "object", "style", "super"}
    train = set(all_captions())
    held = {
        w.make_prompt(t, style=s, object=o)
        for t in w.grid_templates(w.HELDOUT_TEMPLATES)
        for s in w.STYLES
        for o in w.OBJECTS
    }
    assert not train & held


def test_super_words_in_captions() -> None:
    caps = " ".join(all_captions()).lower()
    for word in set(w.STYLE_SUPER.values()) | set(w.OBJECT_SUPER.values()):
        assert word in caps


def test_caption_labels_are_consistent() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    s, o = np.arange(12).repeat(10), np.tile(np.arange(10), 12)
    for _ in range(200):
        si, oi = int(rng.integers(12)), int(rng.integers(10))
        _, label = sample_caption(rng, si, oi)
        assert label.compatible(s, o)[si * 10 + oi]  # the captioned image itself is always a positive


def test_generation_defaults() -> None:
    assert set(w.GENERATION_DEFAULTS) == {"num_inference_steps", "guidance_scale", "height", "width"}


def test_public_api_names() -> None:
    for name in (
        "STYLES",
        "OBJECTS",
        "STYLE_SUPER",
        "OBJECT_SUPER",
        "TRAIN_TEMPLATES",
        "HELDOUT_TEMPLATES",
        "CANVAS_TEMPLATE",
        "display_name",
        "canonical_name",
        "make_prompt",
        "render",
        "render_batch",
        "assets_dir",
        "pipeline_dir",
        "load_pipeline",
        "load_clip",
        "load_judges",
        "GENERATION_DEFAULTS",
    ):
        assert hasattr(w, name), name
    from hirm.world.judges import Judge

    assert w.Judge is Judge and callable(w.render)
