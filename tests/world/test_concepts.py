"""Names, super-categories, templates and prompt helpers."""

from __future__ import annotations

import pytest

import hirm.world as w
from hirm.world.captions import all_captions, sample_caption, template_kind

UNLEARNCANVAS_OBJECTS = (
    "Architectures",
    "Bears",
    "Birds",
    "Butterfly",
    "Cats",
    "Dogs",
    "Fishes",
    "Flame",
    "Flowers",
    "Frogs",
    "Horses",
    "Human",
    "Jellyfish",
    "Rabbits",
    "Sandwiches",
    "Sea",
    "Statues",
    "Towers",
    "Trees",
    "Waterfalls",
)


def test_world_size() -> None:
    assert len(w.STYLES) == 20 and len(set(w.STYLES)) == 20
    assert w.OBJECTS == UNLEARNCANVAS_OBJECTS
    assert w.STYLES[:12] == (
        "Crayon",
        "Mosaic",
        "Neon_Lines",
        "Pastel",
        "Sketch",
        "Pop_Art",
        "Watercolor",
        "On_Fire",
        "Ink_Art",
        "Bricks",
        "Winter",
        "Rust",
    )  # the first world's styles keep their indices
    assert set(w.STYLE_SUPER) == set(w.STYLES) and set(w.OBJECT_SUPER) == set(w.OBJECTS)


def test_super_categories_are_single_words_distinct_from_names() -> None:
    import re

    style_supers, object_supers = set(w.STYLE_SUPER.values()), set(w.OBJECT_SUPER.values())
    assert style_supers == {"painting", "drawing", "pattern", "scenery"}
    assert object_supers == {"animal", "marine", "plant", "building", "nature", "person", "food"}
    names = {w.display_name(c).lower() for c in w.STYLES + w.OBJECTS}
    for word in style_supers | object_supers:
        assert re.fullmatch(r"[a-z]+", word) and word not in names, word
    assert not style_supers & object_supers


def test_names_round_trip() -> None:
    for name in w.STYLES + w.OBJECTS:
        shown = w.display_name(name)
        assert "_" not in shown
        for spelling in (name, shown, shown.lower(), shown.upper(), f"  {name.lower()} "):
            assert w.canonical_name(spelling) == name, spelling
    assert len({c.lower() for c in w.STYLES + w.OBJECTS}) == len(w.STYLES) + len(w.OBJECTS)


@pytest.mark.parametrize("name", ["Neon_Lines", "neon lines", "NEON  LINES", " neon_lines "])
def test_canonical_name_any_spelling(name: str) -> None:
    assert w.canonical_name(name) == "Neon_Lines"
    assert w.display_name(name) == "Neon Lines"


def test_canonical_name_unknown_lists_names() -> None:
    with pytest.raises(ValueError, match="Pop_Art"):
        w.canonical_name("Picasso")


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
    ns, no = len(w.STYLES), len(w.OBJECTS)
    s, o = np.arange(ns).repeat(no), np.tile(np.arange(no), ns)
    for _ in range(200):
        si, oi = int(rng.integers(ns)), int(rng.integers(no))
        _, label = sample_caption(rng, si, oi)
        assert label.compatible(s, o)[si * no + oi]  # the captioned image itself is always a positive


# Words that two concepts share. They come from UnlearnCanvas's own names ("Pop Art" / "Ink Art", "Ink
# Art" / "Red Blue Ink") and "jelly fish"; a new synonym must not add to them.
KNOWN_SHARED_WORDS = {"art", "ink", "fish"}


def test_synonyms() -> None:
    import re

    from hirm.world.captions import heldout_words
    from hirm.world.concepts import OBJECT_SYNONYMS, STYLE_SYNONYMS

    synonyms = STYLE_SYNONYMS | OBJECT_SYNONYMS
    assert set(STYLE_SYNONYMS) == set(w.STYLES) and set(OBJECT_SYNONYMS) == set(w.OBJECTS)
    supers = set(w.STYLE_SUPER.values()) | set(w.OBJECT_SUPER.values())
    names = {w.display_name(c).lower() for c in synonyms}
    owner: dict[str, str] = {}
    word_owners: dict[str, set[str]] = {}
    for concept, syns in synonyms.items():
        assert len(syns) == 2 and len(set(syns)) == 2, concept
        for phrase in (w.display_name(concept).lower(), *syns):
            for word in re.findall(r"[a-z]+", phrase):
                word_owners.setdefault(word, set()).add(concept)
        for syn in syns:
            assert syn == syn.lower().strip() and re.fullmatch(r"[a-z]+([ -][a-z]+)*", syn), syn
            assert syn not in names and syn not in supers, (concept, syn)
            assert owner.setdefault(syn, concept) == concept, (syn, owner[syn], concept)
            assert not set(re.findall(r"[a-z]+", syn)) & heldout_words(), (concept, syn)
    shared = {word for word, owners in word_owners.items() if len(owners) > 1}
    assert shared == KNOWN_SHARED_WORDS, shared


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


def test_distractors_never_use_training_or_heldout_words() -> None:
    import re

    import numpy as np

    from hirm.world.captions import add_distractors, caption_words, heldout_words, pseudo_word

    rng = np.random.default_rng(0)
    words = [pseudo_word(rng) for _ in range(2000)]
    assert not set(words) & (caption_words() | heldout_words())
    assert "drawn" in heldout_words() and "showing" in heldout_words()
    assert all(re.fullmatch(r"[a-z]{2,}", x) for x in words)

    text = "A Cats image in Pastel style."
    assert add_distractors(rng, text, p=0.0) == text
    assert add_distractors(rng, "", p=1.0) == ""
    noisy = add_distractors(rng, text, p=1.0, max_words=2)
    extra = [x for x in noisy.split(" ") if x not in text.split(" ")]
    assert 1 <= len(extra) <= 2 and [x for x in noisy.split(" ") if x not in extra] == text.split(" ")
    # Deterministic in the generator's state.
    a = [add_distractors(np.random.default_rng(5), text, p=0.5) for _ in range(3)]
    assert a[0] == a[1] == a[2]
