"""HiRM on the trained miniature world (MiniCLIP + MiniSD): random tiny encoders have no semantic
structure, so HiRM's specificity is checked here, on a model that learned its concepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hirm
from hirm.core.config import ReadingPoint
from hirm.core.encoder import read_representation, tokenize

world = pytest.importorskip("hirm.world")


@pytest.fixture(scope="module")
def model(world_model):
    return world_model


def _prompts(obj: str) -> list[str]:
    return [
        world.make_prompt(t, style=s, object=obj)
        for t in world.HELDOUT_TEMPLATES[:4]
        for s in ("Pastel", "Rust")
    ]


def _reads(encoder, tokenizer, prompts, point):
    with torch.no_grad():
        return read_representation(encoder, tokenize(tokenizer, prompts), point).float()


@pytest.mark.xfail(
    strict=True,
    reason="Reference HiRM-R (20 steps, lr 5e-5) does not give the erased object 3x the shift of the others "
    "on MiniCLIP: measured 1.5x on the first MiniCanvas; still failing on MiniCanvas 2 (issue 11, item 4).",
)
def test_reference_hirm_moves_the_concept_and_keeps_the_others(model):
    """Reference defaults (HiRM-R, object: 20 steps, lr 5e-5) on held-out templates: the erased
    object's conditioning (last_hidden_state, what the U-Net sees) moves at least 3x more than any
    other object's."""
    encoder, tokenizer = model.text_encoder(), model.tokenizer()
    patch = hirm.erase(model, ["Cats"], progress=False)
    erased = hirm.apply_patch(hirm.load_model("minicanvas").text_encoder(), patch, component="text_encoder")
    final = ReadingPoint(site="final")
    shifts = {}
    for obj in world.OBJECTS:
        prompts = _prompts(world.display_name(obj))
        before, after = _reads(encoder, tokenizer, prompts, final), _reads(erased, tokenizer, prompts, final)
        shifts[obj] = ((after - before).norm() / before.norm()).item()
    others = max(v for k, v in shifts.items() if k != "Cats")
    assert shifts["Cats"] > 3 * others, shifts


@pytest.mark.xfail(
    strict=True,
    reason="Reference HiRM-R (20 steps, lr 5e-5) does not erase Cats from MiniSD's images: Cats still drawn "
    "for 7/8 seeds on the first MiniCanvas; still failing on MiniCanvas 2 (issue 11, item 4).",
)
def test_erased_object_is_no_longer_generated_but_others_are(model):
    """End to end on images: the object judge no longer sees Cats in Cats prompts; Horses survive."""
    judges = world.load_judges()
    patch = hirm.erase(model, ["Cats"], progress=False)
    original = hirm.load_pipeline("minicanvas")
    erased = hirm.load_pipeline("minicanvas", patches=[patch])
    from hirm.generation import generate

    seeds = list(range(8))
    accuracy = {}
    for name, pipe in (("original", original), ("erased", erased)):
        images = generate(
            pipe,
            ["A Cats image in Pastel style.", "A Horses image in Pastel style."],
            seeds,
            **world.GENERATION_DEFAULTS,
        )
        probs = judges["object"](torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
        labels = np.array(judges["object"].classes)[probs.argmax(-1).numpy()]
        accuracy[name] = ((labels[: len(seeds)] == "Cats").mean(), (labels[len(seeds) :] == "Horses").mean())
    assert accuracy["original"][0] >= 0.75 and accuracy["original"][1] >= 0.75, accuracy
    assert accuracy["erased"][0] <= 0.25, accuracy
    assert accuracy["erased"][1] >= 0.75, accuracy


def test_world_tuned_hirm_s_erases_cats_and_keeps_horses(model):
    """The setting the comparison calls hirm-s-tuned (HiRM-S toward "animal", final read-out, 100 steps,
    lr 5e-4) erases on MiniCLIP and keeps Horses (first MiniCanvas: Cats 8/8 -> 1/8, Horses 8/8 -> 8/8 with
    these seeds; the bound on Cats leaves two images of slack; it also passes on MiniCanvas 2)."""
    from hirm.evaluation.compare import WORLD_TUNED_HIRM
    from hirm.generation import generate

    judges = world.load_judges()
    config = hirm.HiRMConfig(**WORLD_TUNED_HIRM)
    patch = hirm.erase(model, [hirm.concept("Cats", super_category="animal")], config=config, progress=False)
    accuracy = {}
    for name, patches in (("original", []), ("erased", [patch])):
        pipe = hirm.load_pipeline("minicanvas", patches=patches)
        images = generate(
            pipe, ["A Cats image in Pastel style.", "A Horses image in Pastel style."], list(range(8)),
            **world.GENERATION_DEFAULTS,
        )  # fmt: skip
        probs = judges["object"](torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
        labels = np.array(judges["object"].classes)[probs.argmax(-1).numpy()]
        accuracy[name] = ((labels[:8] == "Cats").mean(), (labels[8:] == "Horses").mean())
    assert accuracy["original"][0] >= 0.75 and accuracy["original"][1] >= 0.75, accuracy
    assert accuracy["erased"][0] <= 0.375, accuracy
    assert accuracy["erased"][1] >= 0.75, accuracy
