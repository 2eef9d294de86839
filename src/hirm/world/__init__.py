"""MiniCanvas: a miniature UnlearnCanvas world (20 styles x 20 objects, 32x32) with its own MiniCLIP,
MiniSD (a diffusers StableDiffusionPipeline) and two judges, trained on CPU and shipped as assets.

Importing this package is light (pure Python); torch/numpy/diffusers load on first use of the
corresponding function. See docs/world.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .concepts import (
    CANVAS_TEMPLATE,
    GENERATION_DEFAULTS,
    HELDOUT_TEMPLATES,
    OBJECT_SUPER,
    OBJECTS,
    STYLE_SUPER,
    STYLES,
    TRAIN_TEMPLATES,
    canonical_name,
    display_name,
    grid_templates,
    make_prompt,
)

if TYPE_CHECKING:
    from .assets import AssetError, assets_dir, load_clip, load_judges, load_pipeline, pipeline_dir
    from .build import build_world
    from .judges import Judge
    from .rendering import render, render_batch, render_grid

_LAZY = {
    "render": "rendering",
    "render_batch": "rendering",
    "render_grid": "rendering",
    "assets_dir": "assets",
    "pipeline_dir": "assets",
    "load_pipeline": "assets",
    "load_clip": "assets",
    "load_judges": "assets",
    "AssetError": "assets",
    "Judge": "judges",
    "build_world": "build",
}

__all__ = [
    "CANVAS_TEMPLATE",
    "GENERATION_DEFAULTS",
    "HELDOUT_TEMPLATES",
    "OBJECTS",
    "OBJECT_SUPER",
    "STYLES",
    "STYLE_SUPER",
    "TRAIN_TEMPLATES",
    "canonical_name",
    "display_name",
    "grid_templates",
    "make_prompt",
    "render",
    "render_batch",
    "render_grid",
    "assets_dir",
    "pipeline_dir",
    "load_pipeline",
    "load_clip",
    "load_judges",
    "AssetError",
    "Judge",
    "build_world",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
