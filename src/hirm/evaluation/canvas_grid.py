"""The style x object universe of an UnlearnCanvas-type evaluation and the prompts of its grid.

:class:`Canvas` holds the concept names (canonical spelling, e.g. ``Van_Gogh``), their super-category
words, and turns templates into prompts (names written with spaces, ``Van Gogh``). Every name a user
gives is normalised by :meth:`Canvas.canonical`, which uses :func:`hirm.evaluation.common.concept_key`.

:func:`build_items` lists the images to generate: the ``grid`` split (every template x style x object
x seed), and the ``heldout`` and ``super`` splits (templates not seen in training / templates that add the
super-category word). With a ``target``, the ``heldout`` and ``super`` splits keep only the prompts that
name the target (they are used for UA only).
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hirm.evaluation.common import EvaluationInputError, concept_key, display_name

Domain = Literal["style", "object"]
SPLITS: tuple[str, ...] = ("grid", "heldout", "super")

#: UnlearnCanvas's 50 styles and its photo class (``theme_available`` of its evaluation constants: 51
#: themes, in the order of its style classifier's 51 outputs) and its 20 object classes.
UNLEARNCANVAS_STYLES: tuple[str, ...] = (
    "Abstractionism", "Artist_Sketch", "Blossom_Season", "Bricks", "Byzantine", "Cartoon", "Cold_Warm",
    "Color_Fantasy", "Comic_Etch", "Crayon", "Cubism", "Dadaism", "Dapple", "Defoliation", "Early_Autumn",
    "Expressionism", "Fauvism", "French", "Glowing_Sunset", "Gorgeous_Love", "Greenfield", "Impressionism",
    "Ink_Art", "Joy", "Liquid_Dreams", "Magic_Cube", "Meta_Physics", "Meteor_Shower", "Monet", "Mosaic",
    "Neon_Lines", "On_Fire", "Pastel", "Pencil_Drawing", "Picasso", "Pop_Art", "Red_Blue_Ink", "Rust",
    "Seed_Images", "Sketch", "Sponge_Dabbed", "Structuralism", "Superstring", "Surrealism", "Ukiyoe",
    "Van_Gogh", "Vibrant_Flow", "Warm_Love", "Warm_Smear", "Watercolor", "Winter",
)  # fmt: skip
UNLEARNCANVAS_OBJECTS: tuple[str, ...] = (
    "Architectures", "Bears", "Birds", "Butterfly", "Cats", "Dogs", "Fishes", "Flame", "Flowers", "Frogs",
    "Horses", "Human", "Jellyfish", "Rabbits", "Sandwiches", "Sea", "Statues", "Towers", "Trees", "Waterfalls",
)  # fmt: skip
#: UnlearnCanvas's photo class: the seed photographs the styles were painted from. Its images are generated
#: and judged like a style's ("A Cats image in Seed Images style.") and count for CRA, but IRA leaves it
#: out (the mean over the *other 49 styles*), and it cannot be the erased concept.
PHOTO_CLASS = "Seed_Images"

#: Templates that name a concept *and* its super-category word (the miniature world's captions use them).
SUPER_TEMPLATES: tuple[str, ...] = (
    "A {object} ({object_super}) image in {style} ({style_super}) style.",
    "A {style_super} of {object} in {style} style.",
)


class UnknownConceptError(EvaluationInputError):
    """The concept is neither a style nor an object of the canvas."""


def template_fields(template: str) -> frozenset[str]:
    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f)


@dataclass(frozen=True)
class Canvas:
    """Styles, objects (canonical names) and their super-category words.

    ``ira_excluded`` names concepts that are generated and judged like the others (their images count
    for CRA and the other domain's IRA) but are not retained concepts of their own domain's IRA and
    cannot be erased: UnlearnCanvas's photo class ``Seed_Images``.
    """

    styles: tuple[str, ...]
    objects: tuple[str, ...]
    style_super: Mapping[str, str] = field(default_factory=dict)
    object_super: Mapping[str, str] = field(default_factory=dict)
    ira_excluded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        keys = [concept_key(n) for n in self.styles + self.objects]
        if len(set(keys)) != len(keys):
            raise EvaluationInputError("Style and object names must be distinct once spelling is normalised.")
        if not self.styles or not self.objects:
            raise EvaluationInputError("A canvas needs at least one style and one object.")
        unknown = {concept_key(n) for n in self.ira_excluded} - set(keys)
        if unknown:
            raise EvaluationInputError(f"ira_excluded names {sorted(unknown)}, which are not on the canvas.")

    @classmethod
    def unlearncanvas(cls) -> Canvas:
        """UnlearnCanvas: 50 styles and the photo class ``Seed_Images`` (out of IRA) x 20 objects."""
        return cls(UNLEARNCANVAS_STYLES, UNLEARNCANVAS_OBJECTS, ira_excluded=(PHOTO_CLASS,))

    @classmethod
    def from_lists(cls, styles: Sequence[str], objects: Sequence[str]) -> Canvas:
        """A canvas of names given as ``NAME`` or ``NAME | super-category word``; ``Seed_Images`` among
        the styles is UnlearnCanvas's photo class (see :data:`PHOTO_CLASS`)."""
        style_names, style_super = _split_supers(styles)
        object_names, object_super = _split_supers(objects)
        photo = tuple(n for n in style_names if concept_key(n) == concept_key(PHOTO_CLASS))
        return cls(style_names, object_names, style_super, object_super, ira_excluded=photo)

    @property
    def has_supers(self) -> bool:
        """Whether every style and object has a super-category word (the super split needs them)."""
        return set(self.style_super) >= set(self.styles) and set(self.object_super) >= set(self.objects)

    def in_ira(self, name: str) -> bool:
        return concept_key(name) not in {concept_key(n) for n in self.ira_excluded}

    @classmethod
    def from_world(cls) -> Canvas:
        """The miniature world's 20 styles x 20 objects (``hirm.world``)."""
        import hirm.world as world

        return cls(
            tuple(world.STYLES), tuple(world.OBJECTS), dict(world.STYLE_SUPER), dict(world.OBJECT_SUPER)
        )

    def names(self, domain: Domain) -> tuple[str, ...]:
        return self.styles if domain == "style" else self.objects

    def canonical(self, name: str) -> str:
        """Any spelling -> the canonical name. Raises :class:`UnknownConceptError` with the valid names."""
        key = concept_key(name)
        for canon in self.styles + self.objects:
            if concept_key(canon) == key:
                return canon
        raise UnknownConceptError(
            f"Unknown concept {name!r}. Styles: {', '.join(self.styles)}; objects: {', '.join(self.objects)}."
        )

    def erasable(self, name: str) -> str:
        """:meth:`canonical`, refusing the concepts outside IRA (the photo class)."""
        canon = self.canonical(name)
        if not self.in_ira(canon):
            raise EvaluationInputError(
                f"{canon} is UnlearnCanvas's photo class (the unstyled seed images): it is judged, but it is "
                "not a concept to erase. Choose a style or an object."
            )
        return canon

    def domain(self, name: str) -> Domain:
        return "style" if self.canonical(name) in self.styles else "object"

    def prompt(self, template: str, *, style: str | None = None, object: str | None = None) -> str:  # noqa: A002
        """Fill ``template`` ({style}, {object}, {style_super}, {object_super}); names written with spaces."""
        values: dict[str, str] = {}
        if style is not None:
            values["style"] = display_name(style)
            values["style_super"] = self.style_super.get(style, display_name(style))
        if object is not None:
            values["object"] = display_name(object)
            values["object_super"] = self.object_super.get(object, display_name(object))
        missing = template_fields(template) - set(values)
        if missing:
            raise EvaluationInputError(f"Template {template!r} needs {sorted(missing)}.")
        text = template.format(**values)
        return text[:1].upper() + text[1:] if template[:1].isupper() else text


def read_names(path: str | os.PathLike, what: str) -> list[str]:
    """One name per line of a text file (``NAME`` or ``NAME | super-category word``); blank lines and
    ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"No {what} file at {path} (a text file, one name per line).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EvaluationInputError(f"{path} ({what}) is not a UTF-8 text file.") from None
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [line for line in lines if line]
    if not names:
        raise EvaluationInputError(f"{path} lists no {what} (one name per line).")
    return names


def _split_supers(entries: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    names, supers = [], {}
    for entry in entries:
        name, _, word = (part.strip() for part in entry.partition("|"))
        if not name:
            raise EvaluationInputError(f"{entry!r} has no name before '|'.")
        names.append(name)
        if word:
            supers[name] = word
    return tuple(names), supers


@dataclass(frozen=True)
class Item:
    """One image to generate and judge. ``style``/``object`` are ``None`` when the prompt does not name one."""

    split: str
    template: str
    style: str | None
    object: str | None
    seed: int
    prompt: str

    def label(self, domain: Domain) -> str | None:
        return self.style if domain == "style" else self.object


def _named(template: str) -> tuple[bool, bool]:
    fields = template_fields(template)
    return bool(fields & {"style", "style_super"}), bool(fields & {"object", "object_super"})


def build_items(
    canvas: Canvas,
    *,
    templates: Sequence[str],
    heldout_templates: Sequence[str] = (),
    super_templates: Sequence[str] = (),
    seeds: Sequence[int],
    target: str | None = None,
) -> list[Item]:
    """The images of an evaluation, in a fixed order (split, template, style, object, seed).

    ``target=None`` lists every split in full (the original model's baseline). With a target, the
    ``heldout`` and ``super`` splits are restricted to prompts naming the target.
    """
    if not templates:
        raise EvaluationInputError("Give at least one grid template.")
    if not seeds:
        raise EvaluationInputError("Give at least one seed.")
    for t in templates:
        if _named(t) != (True, True):
            raise EvaluationInputError(f"Grid template {t!r} must name both {{style}} and {{object}}.")
    tgt = None if target is None else canvas.canonical(target)
    tgt_domain = None if tgt is None else canvas.domain(tgt)
    items: list[Item] = []
    for split, temps in (("grid", templates), ("heldout", heldout_templates), ("super", super_templates)):
        for template in temps:
            has_style, has_object = _named(template)
            if not (has_style or has_object):
                raise EvaluationInputError(f"Template {template!r} names neither a style nor an object.")
            styles: Sequence[str | None] = canvas.styles if has_style else (None,)
            objects: Sequence[str | None] = canvas.objects if has_object else (None,)
            if split != "grid" and tgt is not None:
                if (tgt_domain == "style" and not has_style) or (tgt_domain == "object" and not has_object):
                    continue
                styles = (tgt,) if tgt_domain == "style" else styles
                objects = (tgt,) if tgt_domain == "object" else objects
            for style in styles:
                for obj in objects:
                    prompt = canvas.prompt(template, style=style, object=obj)
                    items.extend(Item(split, template, style, obj, int(s), prompt) for s in seeds)
    return items
