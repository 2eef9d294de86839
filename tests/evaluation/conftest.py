"""Fixtures of the evaluation tests: a tiny canvas, hand-made judges, tiny settings, a tiny CLIP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stand_ins import channel_judge

from hirm.evaluation.canvas import CanvasSettings
from hirm.evaluation.canvas_grid import Canvas

STYLES = ("Van_Gogh", "Crayon")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a shared, loaded CPU two OpenMP threads can be 100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


OBJECTS = ("Cats", "Dogs")


@pytest.fixture
def canvas() -> Canvas:
    return Canvas(
        STYLES, OBJECTS, {"Van_Gogh": "painting", "Crayon": "drawing"}, {"Cats": "animal", "Dogs": "animal"}
    )


@pytest.fixture
def judges():
    # Class names spelled differently from the canvas on purpose ("Van Gogh", lower case).
    return {
        "style": channel_judge(("Van Gogh", "crayon"), (0, 1)),
        "object": channel_judge(("cats", "DOGS"), (2, 1)),
    }


@pytest.fixture
def settings() -> CanvasSettings:
    return CanvasSettings(
        heldout_templates=("{object}, {style}",),
        super_templates=("A {object} ({object_super}) image in {style} style.",),
        seeds=(1, 2),
        num_inference_steps=2,
        guidance_scale=3.0,
        batch_size=8,
        samples=1,
    )


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPModel with SD's tokenizer, saved with save_pretrained (no preprocessor config)."""
    import tiny
    from transformers import CLIPConfig, CLIPModel

    path = tmp_path_factory.mktemp("models") / "clip"
    tokenizer = tiny.clip_tokenizer(path)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_patch(sd_dir, tmp_path_factory) -> Path:
    """A HiRM patch of the tiny SD pipeline erasing "Cats" (a few steps)."""
    import hirm
    from hirm.core.config import HiRMConfig

    patch = hirm.erase(
        str(sd_dir), ["Cats"], config=HiRMConfig(steps=3, lr=1e-2, precision="fp32"), progress=False
    )
    return patch.save(tmp_path_factory.mktemp("patches") / "cats.safetensors")


@pytest.fixture
def cli_app():
    """A typer app with the evaluation commands registered (as hirm.cli.main does)."""
    import typer

    from hirm.cli import eval as eval_cli
    from hirm.cli import report as report_cli
    from hirm.cli import sweep as sweep_cli

    application = typer.Typer()
    for module in (eval_cli, sweep_cli, report_cli):
        module.register(application)
    return application
