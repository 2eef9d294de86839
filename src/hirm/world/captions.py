"""Caption sampling for training: templates, synonyms, super-categories and label bookkeeping.

A caption is built from a template (see :data:`TRAIN_TEMPLATES`) for an image of ``(style, object)``;
placeholders absent from the template leave that concept unnamed. A caption's *label* records what it
pins down, so contrastive training can treat every compatible (caption, image) pair as a positive.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache

import numpy as np

from .concepts import (
    HELDOUT_TEMPLATES,
    OBJECT_SUPER,
    OBJECT_SYNONYMS,
    OBJECTS,
    STYLE_SUPER,
    STYLE_SYNONYMS,
    STYLES,
    TRAIN_TEMPLATES,
    display_name,
    make_prompt,
    template_fields,
)

STYLE_SUPERS: tuple[str, ...] = tuple(dict.fromkeys(STYLE_SUPER[s] for s in STYLES))
OBJECT_SUPERS: tuple[str, ...] = tuple(dict.fromkeys(OBJECT_SUPER[o] for o in OBJECTS))
STYLE_SUPER_IDX = np.array([STYLE_SUPERS.index(STYLE_SUPER[s]) for s in STYLES])
OBJECT_SUPER_IDX = np.array([OBJECT_SUPERS.index(OBJECT_SUPER[o]) for o in OBJECTS])


def template_kind(template: str) -> str:
    """One of ``"both"`` (names object and style), ``"object"``, ``"style"``, ``"super"`` (the rest)."""
    f = template_fields(template)
    if {"object", "style"} <= f:
        return "both"
    if "object" in f and "style" not in f and "style_super" not in f:
        return "object"
    if "style" in f and "object" not in f and "object_super" not in f:
        return "style"
    return "super"


KIND_WEIGHTS: dict[str, float] = {"both": 0.78, "object": 0.08, "style": 0.08, "super": 0.06}
"""Probability of each template kind when captioning a training image (before CFG dropout)."""


def style_words(style: str) -> tuple[str, ...]:
    """Words used for a style in training captions: display name first, then synonyms."""
    return (display_name(style),) + STYLE_SYNONYMS[style]


def object_words(obj: str) -> tuple[str, ...]:
    """Words used for an object in training captions: display name first, then synonyms."""
    return (display_name(obj),) + OBJECT_SYNONYMS[obj]


@dataclass(frozen=True)
class CaptionLabel:
    """What a caption pins down (-1 = unconstrained): style, object, style super-category, object super-category."""

    style: int
    object: int
    style_super: int
    object_super: int

    def compatible(self, s: np.ndarray, o: np.ndarray) -> np.ndarray:
        """Boolean mask over images with style indices ``s`` and object indices ``o``."""
        ok = np.ones(len(s), dtype=bool)
        if self.style >= 0:
            ok &= s == self.style
        if self.object >= 0:
            ok &= o == self.object
        if self.style_super >= 0:
            ok &= STYLE_SUPER_IDX[s] == self.style_super
        if self.object_super >= 0:
            ok &= OBJECT_SUPER_IDX[o] == self.object_super
        return ok


def caption(
    template: str, s: int, o: int, *, style_word: int = 0, object_word: int = 0
) -> tuple[str, CaptionLabel]:
    """The caption of template for style index ``s``, object index ``o`` and word choices, with its label."""
    sty, obj = STYLES[s], OBJECTS[o]
    f = template_fields(template)
    text = make_prompt(
        template,
        style=sty,
        object=obj,
        style_word=style_words(sty)[style_word],
        object_word=object_words(obj)[object_word],
    )
    label = CaptionLabel(
        style=s if "style" in f else -1,
        object=o if "object" in f else -1,
        style_super=int(STYLE_SUPER_IDX[s]) if "style_super" in f else -1,
        object_super=int(OBJECT_SUPER_IDX[o]) if "object_super" in f else -1,
    )
    return text, label


def sample_caption(
    rng: np.random.Generator,
    s: int,
    o: int,
    *,
    templates: tuple[str, ...] = TRAIN_TEMPLATES,
    p_canonical: float = 0.5,
) -> tuple[str, CaptionLabel]:
    """A random training caption for an image of style ``s`` and object ``o``.

    The template kind is drawn from :data:`KIND_WEIGHTS`; a concept is written by its display name with
    probability ``p_canonical`` and otherwise by a random synonym.
    """
    kinds = {t: template_kind(t) for t in templates}
    present = [k for k in KIND_WEIGHTS if k in kinds.values()]
    w = np.array([KIND_WEIGHTS[k] for k in present])
    kind = present[rng.choice(len(present), p=w / w.sum())]
    pool = [t for t in templates if kinds[t] == kind]
    template = pool[rng.integers(len(pool))]
    sw = 0 if rng.random() < p_canonical else int(rng.integers(1, len(style_words(STYLES[s]))))
    ow = 0 if rng.random() < p_canonical else int(rng.integers(1, len(object_words(OBJECTS[o]))))
    return caption(template, s, o, style_word=sw, object_word=ow)


def all_captions(templates: tuple[str, ...] = TRAIN_TEMPLATES) -> list[str]:
    """Every distinct caption the templates, concepts and synonyms can produce (sorted, deterministic)."""
    out: set[str] = set()
    for t in templates:
        for s, sty in enumerate(STYLES):
            for o, obj in enumerate(OBJECTS):
                for sw in range(len(style_words(sty))):
                    for ow in range(len(object_words(obj))):
                        out.add(caption(t, s, o, style_word=sw, object_word=ow)[0])
    return sorted(out)


@cache
def caption_words() -> frozenset[str]:
    """Every word (lower-case letters only) that occurs in a training caption."""
    return frozenset(w for c in all_captions() for w in re.findall(r"[a-z]+", c.lower()))


@cache
def heldout_words() -> frozenset[str]:
    """Words of the held-out templates (placeholders excluded); no training caption may contain them."""
    text = re.sub(r"\{[a-z_]+\}", " ", " ".join(HELDOUT_TEMPLATES).lower())
    return frozenset(re.findall(r"[a-z]+", text))


@cache
def _stems() -> tuple[str, ...]:
    return tuple(sorted(w for w in caption_words() if len(w) >= 4))


_LETTERS = np.array(list(string.ascii_lowercase))


@cache
def corpus_texts() -> list[str]:
    """The language corpus MiniCLIP's text tower also learns from (``hirm/data/world_corpus.txt.gz``:
    COCO captions and I2P prompts, evaluation prompts excluded; see ``scripts/make_world_corpus.py``)."""
    import gzip
    from importlib.resources import files

    data = files("hirm.data").joinpath("world_corpus.txt.gz").read_bytes()
    return gzip.decompress(data).decode("utf-8").splitlines()


@cache
def context_words() -> tuple[str, ...]:
    """Real English words of the corpus that may be inserted into training captions as context.

    Frequent corpus words (>= 3 occurrences, >= 3 letters) that are not words of the training captions or
    of the held-out templates and share no 4-letter prefix with a training-caption word (so that neither
    ``kitty`` nor ``horseback`` lands in a caption as meaningless context). Sorted, deterministic.
    """
    from collections import Counter

    counts = Counter(w for t in corpus_texts() for w in re.findall(r"[a-z]+", t.lower()))
    prefixes = {w[:4] for w in caption_words() if len(w) >= 4}
    banned = caption_words() | heldout_words()
    keep = (
        w for w, n in counts.items() if n >= 3 and len(w) >= 3 and w not in banned and w[:4] not in prefixes
    )
    return tuple(sorted(keep))


def pseudo_word(rng: np.random.Generator) -> str:
    """A random non-word: random letters, or a cut-off training word with a random ending.

    Never a word of the training captions or of the held-out templates. The cut-off kind (``draw`` +
    ``n`` from ``drawing``) exercises the tokenizer's word-internal merges, which whole training words
    never produce on their own.
    """
    letters, stems = _LETTERS, _stems()
    while True:
        if rng.random() < 0.5:
            word = "".join(rng.choice(letters, size=int(rng.integers(2, 8))))
        else:
            stem = stems[rng.integers(len(stems))]
            word = stem[: int(rng.integers(2, len(stem)))] + "".join(
                rng.choice(letters, size=int(rng.integers(0, 3)))
            )
        if word not in caption_words() and word not in heldout_words():
            return word


def distractor_word(rng: np.random.Generator) -> str:
    """A word that names no concept: a real corpus word (:func:`context_words`) or a :func:`pseudo_word`, 50/50."""
    if rng.random() < 0.5:
        words = context_words()
        return words[int(rng.integers(len(words)))]
    return pseudo_word(rng)


def add_distractors(rng: np.random.Generator, text: str, *, p: float, max_words: int = 2) -> str:
    """With probability ``p``, insert 1..``max_words`` :func:`distractor_word` s at random word boundaries.

    Training augmentation: models learn that unknown words carry no concept, so that captions phrased with
    words they never saw (the held-out templates) still name the same style and object. The caption's label
    is unchanged. Nothing is inserted into the empty (unconditional) caption.
    """
    if not text or p <= 0 or rng.random() >= p:
        return text
    words = text.split(" ")
    for _ in range(int(rng.integers(1, max_words + 1))):
        words.insert(int(rng.integers(len(words) + 1)), distractor_word(rng))
    return " ".join(words)
