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

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hirm.evaluation.common import EvaluationInputError, concept_key, display_name

Domain = Literal["style", "object"]
SPLITS: tuple[str, ...] = ("grid", "heldout", "super")

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
    """Styles, objects (canonical names) and their super-category words."""

    styles: tuple[str, ...]
    objects: tuple[str, ...]
    style_super: Mapping[str, str] = field(default_factory=dict)
    object_super: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keys = [concept_key(n) for n in self.styles + self.objects]
        if len(set(keys)) != len(keys):
            raise EvaluationInputError("Style and object names must be distinct once spelling is normalised.")
        if not self.styles or not self.objects:
            raise EvaluationInputError("A canvas needs at least one style and one object.")

    @classmethod
    def from_world(cls) -> Canvas:
        """The miniature world's 12 styles x 10 objects (``hirm.world``)."""
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
