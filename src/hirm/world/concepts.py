"""Names, super-categories, caption templates and prompt helpers of the MiniCanvas world.

Pure Python (no torch, no numpy) so that ``import hirm.world`` stays light.
"""

from __future__ import annotations

STYLES: tuple[str, ...] = (
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
    "Van_Gogh",
    "Cubism",
    "Glowing_Sunset",
    "Monet",
    "Magic_Cube",
    "Meteor_Shower",
    "Blossom_Season",
    "Red_Blue_Ink",
)
"""Canonical style names (UnlearnCanvas spelling, underscores)."""

OBJECTS: tuple[str, ...] = (
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
"""Canonical object names: UnlearnCanvas's 20 objects, in its (alphabetical) order."""

STYLE_SUPER: dict[str, str] = {
    "Pastel": "painting",
    "Pop_Art": "painting",
    "Watercolor": "painting",
    "On_Fire": "painting",
    "Van_Gogh": "painting",
    "Monet": "painting",
    "Cubism": "painting",
    "Crayon": "drawing",
    "Sketch": "drawing",
    "Ink_Art": "drawing",
    "Neon_Lines": "drawing",
    "Red_Blue_Ink": "drawing",
    "Mosaic": "pattern",
    "Bricks": "pattern",
    "Rust": "pattern",
    "Magic_Cube": "pattern",
    "Winter": "scenery",
    "Glowing_Sunset": "scenery",
    "Meteor_Shower": "scenery",
    "Blossom_Season": "scenery",
}
"""Style -> super-category (painting / drawing / pattern / scenery); the words appear in captions."""

OBJECT_SUPER: dict[str, str] = {
    "Bears": "animal",
    "Birds": "animal",
    "Butterfly": "animal",
    "Cats": "animal",
    "Dogs": "animal",
    "Frogs": "animal",
    "Horses": "animal",
    "Rabbits": "animal",
    "Fishes": "marine",
    "Jellyfish": "marine",
    "Flowers": "plant",
    "Trees": "plant",
    "Architectures": "building",
    "Towers": "building",
    "Statues": "building",
    "Sea": "nature",
    "Waterfalls": "nature",
    "Flame": "nature",
    "Human": "person",
    "Sandwiches": "food",
}
"""Object -> super-category (animal / marine / plant / building / nature / person / food); the words appear
in captions."""

STYLE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "Crayon": ("crayons", "wax crayon"),
    "Mosaic": ("tiled mosaic", "tiles"),
    "Neon_Lines": ("neon", "neon tubes"),
    "Pastel": ("pastels", "soft pastel"),
    "Sketch": ("pencil sketch", "sketchy"),
    "Pop_Art": ("pop-art", "comic pop"),
    "Watercolor": ("watercolour", "aquarelle"),
    "On_Fire": ("fiery", "burning"),
    "Ink_Art": ("ink", "black ink"),
    "Bricks": ("brick wall", "brickwork"),
    "Winter": ("wintry", "snowy"),
    "Rust": ("rusty", "corroded"),
    "Van_Gogh": ("swirly", "brushstrokes"),
    "Cubism": ("cubist", "faceted"),
    "Glowing_Sunset": ("sunset", "dusk"),
    "Monet": ("impressionist", "impressionism"),
    "Magic_Cube": ("rubiks cube", "puzzle cube"),
    "Meteor_Shower": ("meteors", "shooting stars"),
    "Blossom_Season": ("springtime", "sakura"),
    "Red_Blue_Ink": ("misprint", "two-colour print"),
}
"""Training-caption synonyms of each style (besides its display name)."""

OBJECT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "Birds": ("bird", "sparrow"),
    "Cats": ("cat", "kitten"),
    "Fishes": ("fish", "goldfish"),
    "Trees": ("tree", "pine tree"),
    "Towers": ("tower", "castle tower"),
    "Flowers": ("flower", "daisy"),
    "Butterfly": ("butterflies", "moth"),
    "Rabbits": ("rabbit", "bunny"),
    "Jellyfish": ("jelly fish", "medusa"),
    "Horses": ("horse", "pony"),
    "Architectures": ("house", "cottage"),
    "Bears": ("bear", "grizzly"),
    "Dogs": ("dog", "puppy"),
    "Flame": ("flames", "blaze"),
    "Frogs": ("frog", "toad"),
    "Human": ("man", "human figure"),
    "Sandwiches": ("sandwich", "club sandwich"),
    "Sea": ("ocean", "waves"),
    "Statues": ("statue", "sculpture"),
    "Waterfalls": ("waterfall", "cascade"),
}
"""Training-caption synonyms of each object (besides its display name)."""

CANVAS_TEMPLATE = "A {object} image in {style} style."
"""UnlearnCanvas's prompt template."""

TRAIN_TEMPLATES: tuple[str, ...] = (
    CANVAS_TEMPLATE,
    "A {style} style image of {object}.",
    "{object} in {style} style",
    "a picture of {object}, {style} style",
    "{style} {object}",
    "An image of {object} in the {style} style.",
    "A {object} ({object_super}) image in {style} ({style_super}) style.",
    "A {style_super} of {object} in {style} style.",
    # object only
    "A {object} image.",
    "a picture of {object}",
    "{object}",
    # style only
    "An image in {style} style.",
    "{style} style",
    # super-categories only / mixed
    "A {object_super} image in {style} style.",
    "A {object} image in {style_super} style.",
    "A {object_super} image.",
    "An image in {style_super} style.",
)
"""Templates used to caption training data. Placeholders: ``{object}``, ``{style}`` and the
super-category words ``{object_super}``, ``{style_super}`` (filled by :func:`make_prompt`)."""

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "A painting of {object} made in {style} style.",
    "{object}, {style}",
    "Here is a {object} drawn in the {style} style.",
    "{style} style artwork showing {object}.",
    "One {object} shown in a picture.",
    "Artwork in {style} style.",
)
"""Templates that no model sees in training. The first four name both concepts (the judged grid);
the last two name only the object / only the style."""

GENERATION_DEFAULTS: dict = {
    "num_inference_steps": 25,
    "guidance_scale": 6.0,
    "height": 32,
    "width": 32,
}
"""DDIM sampling defaults for the shipped MiniSD pipeline (used by the benchmark and everyone else)."""


def display_name(name: str) -> str:
    """Canonical or display name -> prompt spelling (underscores -> spaces), e.g. ``Neon_Lines -> Neon Lines``."""
    return canonical_name(name).replace("_", " ")


def canonical_name(name: str) -> str:
    """Map a style or object name in any spelling (case-insensitive, spaces or underscores) to its canonical name.

    Raises:
        ValueError: if ``name`` is neither a style nor an object; the message lists the valid names.
    """
    key = "_".join(str(name).strip().replace("_", " ").split()).lower()
    for canon in STYLES + OBJECTS:
        if canon.lower() == key:
            return canon
    raise ValueError(
        f"Unknown MiniCanvas concept {name!r}. Valid styles: {', '.join(STYLES)}; "
        f"valid objects: {', '.join(OBJECTS)}."
    )


def template_fields(template: str) -> frozenset[str]:
    """The placeholder names a template uses, e.g. ``{"object", "style"}``."""
    import string

    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f)


def needs(template: str) -> tuple[bool, bool]:
    """Whether ``template`` needs an object, and whether it needs a style (super-category fields count)."""
    fields = template_fields(template)
    return (bool(fields & {"object", "object_super"}), bool(fields & {"style", "style_super"}))


def grid_templates(templates: tuple[str, ...]) -> tuple[str, ...]:
    """The templates naming both the object and the style by name (used for the style x object grid)."""
    return tuple(t for t in templates if {"object", "style"} <= template_fields(t))


def make_prompt(
    template: str,
    *,
    style: str | None = None,
    object: str | None = None,  # noqa: A002 - the public API uses this name
    style_word: str | None = None,
    object_word: str | None = None,
) -> str:
    """Fill a template. ``style``/``object`` accept any spelling and are written with spaces.

    ``style_word``/``object_word`` override the written word (used for synonyms in training captions).
    Super-category placeholders are filled from :data:`STYLE_SUPER` / :data:`OBJECT_SUPER`.

    Raises:
        ValueError: if the template needs a concept that was not given.
    """
    need_obj, need_sty = needs(template)
    if need_obj and object is None:
        raise ValueError(f"Template {template!r} needs object=...")
    if need_sty and style is None:
        raise ValueError(f"Template {template!r} needs style=...")
    values: dict[str, str] = {}
    if object is not None:
        obj = canonical_name(object)
        if obj not in OBJECTS:
            raise ValueError(f"{object!r} is a style, not an object; objects: {', '.join(OBJECTS)}")
        values["object"] = object_word or display_name(obj)
        values["object_super"] = OBJECT_SUPER[obj]
    if style is not None:
        sty = canonical_name(style)
        if sty not in STYLES:
            raise ValueError(f"{style!r} is an object, not a style; styles: {', '.join(STYLES)}")
        values["style"] = style_word or display_name(sty)
        values["style_super"] = STYLE_SUPER[sty]
    prompt = template.format(**values)
    return prompt[:1].upper() + prompt[1:] if template[:1].isupper() else prompt
