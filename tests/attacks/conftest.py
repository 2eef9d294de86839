"""Fixtures for the attack tests: the miniature world, a deliberately weak erasure and a model that
never learned anything.

Random tiny pipelines know no concept, so an attack's *success* is checked on the trained miniature
world (MiniCanvas, a 2M-parameter U-Net: a few seconds per attack at these budgets):

* ``weak_patch``: the word ``cats`` is pushed 75 % of the way to ``trees`` in the word-embedding
  table. The plain prompts ("A Cats image in ... style.") no longer show cats, but the U-Net and the
  rest of the encoder still know them: a recoverable erasure.
* ``never_patch``: the U-Net replaced by a freshly initialised one (same config, seed 0): a model
  where no concept ever existed, so no attack may report a success there.
"""

from __future__ import annotations

import pytest
import torch

from hirm.core.patch import Patch, component_parameters, make_patch

world = pytest.importorskip("hirm.world")

TOKEN_TABLE = "embeddings.token_embedding.weight"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every attack test runs with one intra-op thread (tests/conftest.py)."""


def blend_word(model, word: str, toward: str, alpha: float) -> Patch:
    """A patch moving ``word``'s row of the word-embedding table ``alpha`` of the way to ``toward``'s."""
    encoder, tokenizer = model.text_encoder(), model.tokenizer()
    (a,) = tokenizer(word, add_special_tokens=False)["input_ids"]
    (b,) = tokenizer(toward, add_special_tokens=False)["input_ids"]
    table = component_parameters(encoder)[TOKEN_TABLE].detach().clone()
    edited = table.clone()
    edited[a] = (1 - alpha) * table[a] + alpha * table[b]
    key = f"text_encoder/{TOKEN_TABLE}"
    return make_patch(
        method="word-blend", originals={key: table}, edited={key: edited}, config={"alpha": alpha},
        concepts=[{"text": word}], base=model.base_info(),
    )  # fmt: skip


@pytest.fixture(scope="session")
def weak_patch(world_model) -> Patch:
    return blend_word(world_model, "cats", "trees", 0.75)


@pytest.fixture(scope="session")
def never_patch(world_model) -> Patch:
    from diffusers import UNet2DConditionModel

    unet = world_model.component("unet")
    torch.manual_seed(0)
    fresh = component_parameters(UNet2DConditionModel.from_config(unet.config))
    originals = {f"unet/{k}": v.detach() for k, v in component_parameters(unet).items()}
    edited = {f"unet/{k}": fresh[k].detach() for k in component_parameters(unet)}
    return make_patch(
        method="untrained-unet", originals=originals, edited=edited, config={}, concepts=[],
        base=world_model.base_info(),
    )  # fmt: skip


@pytest.fixture(scope="session")
def cats_target():
    """Cats in 4 styles (seed 188); textual inversion learns from 2 seeds of the same 4 prompts."""
    from hirm.attacks import AttackTarget, canvas_target
    from hirm.evaluation.canvas_grid import Canvas

    full = canvas_target(Canvas.from_world(), "Cats", seeds=(188,))
    return AttackTarget(
        concept=full.concept, kind=full.kind, items=full.items[:4], train_prompts=full.train_prompts[:4],
        train_seeds=(0, 1), pairs=full.pairs, train_cells=full.train_cells[:4],
    )  # fmt: skip
