"""Original-vs-erased images on the same seeds: one generator per image, so results never depend on
batching or on the number of workers."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hirm.evaluation.generation import Request, generate_batch
from hirm.io import atomic_path


def generate(
    pipe, prompts: Sequence[str], seeds: Sequence[int], *, batch_size: int = 16, **call_kwargs: Any
) -> np.ndarray:
    """Images (len(prompts) * len(seeds), H, W, 3) uint8, prompt-major; one CPU generator per image.

    Sampler settings not given in ``call_kwargs`` take the pipeline's own ``__call__`` defaults.
    """
    defaults = inspect.signature(pipe.__call__).parameters
    settings = {
        key: call_kwargs.get(key, defaults[key].default if key in defaults else None)
        for key in ("guidance_scale", "num_inference_steps", "height", "width")
    }
    requests = [Request(prompt=p, seed=s, **settings) for p in prompts for s in seeds]
    chunks = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
    return np.concatenate([generate_batch(pipe, chunk) for chunk in chunks])


def grid(rows: Sequence[np.ndarray], *, pad: int = 2) -> Image.Image:
    """Tile rows of images (each row: (N, H, W, 3)) into one picture with white gaps."""
    h, w = rows[0].shape[1:3]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = image
    return Image.fromarray(canvas)


def compare_original_erased(
    original,
    erased,
    prompts: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
    **call_kwargs: Any,
) -> Path:
    """Write ``original/``, ``erased/`` PNGs, ``grid.png`` (per prompt: original row, erased row) and
    ``manifest.json`` to ``out_dir`` atomically."""
    before = generate(original, prompts, seeds, **call_kwargs)
    after = generate(erased, prompts, seeds, **call_kwargs)
    n = len(seeds)
    with atomic_path(out_dir, overwrite=overwrite, directory=True, kind="generate") as tmp:
        for name, images in (("original", before), ("erased", after)):
            (tmp / name).mkdir()
            for k, image in enumerate(images):
                Image.fromarray(image).save(tmp / name / f"p{k // n:03d}_s{seeds[k % n]}.png")
        rows = [
            block
            for i in range(len(prompts))
            for block in (before[i * n : (i + 1) * n], after[i * n : (i + 1) * n])
        ]
        scale = max(1, 96 // before.shape[1])
        picture = grid(rows)
        picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(tmp / "grid.png")
        manifest = {"prompts": list(prompts), "seeds": list(seeds), "call": call_kwargs, **(metadata or {})}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return Path(out_dir)
