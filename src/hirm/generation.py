"""Original-vs-erased images on the same seeds: one generator per image, so results never depend on
batching or on the number of workers. ``grid.png`` labels every row (prompt, original / erased) and
every column (seed)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hirm.evaluation.generation import Request, generate_batch
from hirm.io import atomic_path


def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "generate",
    precision: str = "fp32",
    **call_kwargs: Any,
) -> np.ndarray:
    """Images (len(prompts) * len(seeds), H, W, 3) uint8, prompt-major; one CPU generator per image.

    Sampler settings not given in ``call_kwargs`` take the pipeline's own ``__call__`` defaults.
    ``precision``: ``fp32`` (the pipeline's dtype) or ``bf16`` (bfloat16 autocast while sampling).
    ``progress`` shows one bar over all images (labelled ``desc``).
    """
    from tqdm.auto import tqdm

    defaults = inspect.signature(pipe.__call__).parameters
    settings = {
        key: call_kwargs.get(key, defaults[key].default if key in defaults else None)
        for key in ("guidance_scale", "num_inference_steps", "height", "width")
    }
    requests = [Request(prompt=p, seed=s, precision=precision, **settings) for p in prompts for s in seeds]
    chunks = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
    out = []
    with tqdm(total=len(requests), desc=desc, unit="image", disable=not progress) as bar:
        for chunk in chunks:
            out.append(generate_batch(pipe, chunk))
            bar.update(len(chunk))
    return np.concatenate(out)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def wrap_text(text: str, font: Any, width: float) -> str:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (a longer word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def labelled_grid(
    rows: Sequence[tuple[str, np.ndarray]],
    column_labels: Sequence[str],
    *,
    min_cell: int = 96,
    label_width: int = 260,
    font_size: int = 14,
) -> Image.Image:
    """One picture: each row of images ``(label, (N, H, W, 3) uint8)`` with its label on the left, each
    column's label on top. Small images are enlarged (nearest neighbour) to at least ``min_cell`` px.

    The image block is :func:`diffusers.utils.make_image_grid`; the labels are drawn with PIL.
    """
    from diffusers.utils import make_image_grid

    if not rows or any(len(images) != len(column_labels) for _, images in rows):
        raise ValueError("Every row needs one image per column label.")
    h, w = rows[0][1].shape[1:3]
    scale = max(1, -(-min_cell // max(h, w)))
    cells = [
        Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST)
        for _, row in rows
        for image in row
    ]
    body = make_image_grid(cells, rows=len(rows), cols=len(column_labels))
    cw, ch = w * scale, h * scale
    font = _font(font_size)
    head = font_size * 2
    picture = Image.new("RGB", (label_width + body.width, head + body.height), "white")
    picture.paste(body, (label_width, head))
    draw = ImageDraw.Draw(picture)
    for j, text in enumerate(column_labels):
        draw.text((label_width + j * cw + cw / 2, head / 2), text, fill="black", font=font, anchor="mm")
    for i, (label, _) in enumerate(rows):
        text = "\n".join(wrap_text(part, font, label_width - 12) for part in label.split("\n"))
        left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, align="right")
        x = label_width - 8 - (right - left)
        y = head + i * ch + (ch - (bottom - top)) / 2 - top
        draw.multiline_text((x, y), text, fill="black", font=font, align="right")
    return picture


def compare_original_erased(
    original,
    erased,
    prompts: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: bool = False,
    **call_kwargs: Any,
) -> Path:
    """Write ``original/`` (and ``erased/``) PNGs, a labelled ``grid.png`` and ``manifest.json`` atomically.

    ``grid.png``: per prompt an original row and an erased row (``erased=None``: the original model
    only), one column per seed; every row is labelled with its prompt and model, every column with its seed.
    """
    runs = [("original", original)] + ([("erased", erased)] if erased is not None else [])
    images = {
        name: generate(pipe, prompts, seeds, progress=progress, desc=name, **call_kwargs)
        for name, pipe in runs
    }
    n = len(seeds)
    with atomic_path(out_dir, overwrite=overwrite, directory=True, kind="generate") as tmp:
        for name, block in images.items():
            (tmp / name).mkdir()
            for k, image in enumerate(block):
                Image.fromarray(image).save(tmp / name / f"p{k // n:03d}_s{seeds[k % n]}.png")
        rows = [
            (f"{prompt}\n{name}", block[i * n : (i + 1) * n])
            for i, prompt in enumerate(prompts)
            for name, block in images.items()
        ]
        labelled_grid(rows, [f"seed {s}" for s in seeds]).save(tmp / "grid.png")
        manifest = {
            "prompts": list(prompts),
            "seeds": list(seeds),
            "runs": list(images),
            "grid": "rows: per prompt one row per run (original, erased); columns: seeds",
            "call": call_kwargs,
            **(metadata or {}),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return Path(out_dir)
