"""Original-vs-erased images on the same seeds: one generator per image, so results never depend on
batching or on the number of workers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hirm.io import atomic_path


def generate(
    pipe, prompts: Sequence[str], seeds: Sequence[int], *, batch_size: int = 16, **call_kwargs: Any
) -> np.ndarray:
    """Images (len(prompts) * len(seeds), H, W, 3) uint8, ordered prompt-major; seeds are per image."""
    device = getattr(pipe, "_execution_device", None) or pipe.device
    jobs = [(p, s) for p in prompts for s in seeds]
    images = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
        out = pipe([p for p, _ in chunk], generator=generators, output_type="np", **call_kwargs)
        images.append((np.clip(out.images, 0, 1) * 255).round().astype(np.uint8))
    del device
    return np.concatenate(images) if images else np.zeros((0, 1, 1, 3), np.uint8)


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
    with atomic_path(out_dir, overwrite=overwrite, directory=True) as tmp:
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
