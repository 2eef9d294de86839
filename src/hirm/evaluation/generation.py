"""Batched, seeded, cached and shardable image generation for any diffusers text-to-image pipeline.

* **Per-image seeds**: every image gets its own ``torch.Generator`` seeded with its row's seed, so an
  image does not depend on its batch neighbours' seeds.
* **Fixed chunks**: the requests are cut into chunks of ``batch_size`` once, in a fixed order; each chunk
  is generated (and scored) as one batch by exactly one process. Processes take chunks round-robin
  (``accelerate.PartialState``), so the numbers are bit-identical for 1, 2 or N workers.
* **Scoring where generated**: a ``score_fn(uint8 images (B, H, W, 3)) -> list`` runs on each chunk in the
  process that made it; only the (small) scores travel between processes, plus the images asked for
  with ``keep``.
* **Cache**: images are quantised to uint8 (what is judged is exactly what is cached) and stored as PNG
  under a key of (model fingerprint, prompt, seed, settings); a cached image is never regenerated.

Launch over several processes with ``accelerate launch --num_processes N ...``; single-process runs
need nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hirm.io import sha256_file

ScoreFn = Callable[[np.ndarray], list[Any]]


def distributed_state():
    """accelerate's ``PartialState``, on CPU processes too.

    ``accelerate launch --num_processes N`` shards over GPUs. On a machine without GPUs launch the same
    command with ``torchrun --nproc_per_node N`` (or set ``ACCELERATE_USE_CPU=1``): the processes then
    join a gloo group (accelerate's ``MULTI_CPU``) instead of each running alone.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (world > 1 and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def default_cache_dir() -> Path:
    """``$HIRM_CACHE/images``, else ``$XDG_CACHE_HOME/hirm/images``, else ``~/.cache/hirm/images``."""
    if os.environ.get("HIRM_CACHE"):
        return Path(os.environ["HIRM_CACHE"]) / "images"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "hirm" / "images"


PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
"""Sampling precision: the pipeline's own dtype, or bfloat16 autocast around it (weights unchanged)."""


@dataclass(frozen=True)
class Request:
    """One image: prompt, seed and sampler settings (``None`` = the pipeline's default)."""

    prompt: str
    seed: int
    guidance_scale: float
    num_inference_steps: int
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")

    def group(self) -> tuple:
        return (
            self.guidance_scale,
            self.num_inference_steps,
            self.height,
            self.width,
            self.negative_prompt is None,
            self.precision,
        )


def model_fingerprint(path: str | os.PathLike) -> str:
    """Identity of a model directory by content: every file's relative path and content digest.

    Two copies of one model (a fresh clone, another checkout, a copied directory) share the image cache
    and resume each other's sweeps; a file changed in place changes it. A file of the hub cache is a link
    to a blob named by its sha256, and that name is its digest (nothing is read); other files are hashed,
    once per process for an unchanged file (path, size and modification time).
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(root).as_posix()}:{_content_digest(file)}\n".encode())
    return digest.hexdigest()[:32]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _content_digest(file: Path) -> str:
    real = file.resolve()
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name  # huggingface_hub stores LFS files as blobs/<sha256>
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(real)
    return _DIGESTS[key]


def scheduler_signature(pipe: Any) -> dict[str, Any]:
    """Scheduler class and config, recorded with results and part of every cache key."""
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None:
        return {}
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "config": json.loads(json.dumps(config, default=str))}


def cache_extra(pipe: Any) -> dict[str, Any]:
    """What besides the request decides an image: scheduler, pipeline class, device type and dtype."""
    return {
        "scheduler": scheduler_signature(pipe),
        "pipeline": type(pipe).__name__,
        "device": getattr(getattr(pipe, "device", None), "type", "cpu"),
        "dtype": str(getattr(pipe, "dtype", "")),
    }


class ImageCache:
    """PNG files under ``root/<model key>/<2 hex>/<sha256>.png``, written atomically (multi-process safe)."""

    def __init__(self, root: str | os.PathLike, model_key: str) -> None:
        self.root = Path(root) / model_key
        self.model_key = model_key

    def path(self, request: Request, extra: Mapping[str, Any]) -> Path:
        payload = json.dumps({"request": asdict(request), "extra": extra}, sort_keys=True, default=str)
        key = hashlib.sha256(payload.encode()).hexdigest()
        return self.root / key[:2] / f"{key}.png"

    def get(self, request: Request, extra: Mapping[str, Any]) -> np.ndarray | None:
        path = self.path(request, extra)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB")).copy()
        except OSError:  # a truncated file from a crash: regenerate it
            return None

    def put(self, request: Request, extra: Mapping[str, Any], image: np.ndarray) -> None:
        path = self.path(request, extra)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)


@dataclass
class Timing:
    """Seconds spent generating and scoring (this process; summed over processes after a gather)."""

    generate: float = 0.0
    score: float = 0.0
    generated: int = 0
    cached: int = 0


def _to_uint8(images: Any) -> np.ndarray:
    """Pipeline output (numpy float (B, H, W, 3) in [0, 1], or PIL list) -> uint8 (B, H, W, 3)."""
    if isinstance(images, np.ndarray):
        return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.stack([np.asarray(img.convert("RGB")) for img in images])


@torch.no_grad()
def generate_batch(pipe: Any, requests: Sequence[Request]) -> np.ndarray:
    """Generate one batch of requests that share sampler settings -> uint8 (B, H, W, 3).

    Generators live on the CPU (diffusers draws the initial noise there and moves it), so an image
    depends only on its seed and settings, not on the device type or the batch it is in.
    """
    first = requests[0]
    if any(r.group() != first.group() for r in requests):
        raise ValueError("generate_batch needs requests with identical sampler settings.")
    generators = [torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in requests]
    kwargs: dict[str, Any] = dict(
        prompt=[r.prompt for r in requests],
        generator=generators,
        guidance_scale=first.guidance_scale,
        num_inference_steps=first.num_inference_steps,
        output_type="np",
    )
    if first.height is not None:
        kwargs["height"], kwargs["width"] = first.height, first.width
    if first.negative_prompt is not None:
        kwargs["negative_prompt"] = [r.negative_prompt or "" for r in requests]
    device_type = getattr(getattr(pipe, "device", None), "type", "cpu")
    if first.precision == "bf16":
        warn_emulated_bf16(torch.device(device_type))
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=first.precision == "bf16"):
        kwargs.update(_distinct_prompt_embeds(pipe, kwargs))
        images = pipe(**kwargs).images
    return _to_uint8(images)


def _distinct_prompt_embeds(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """SD 1.x/2.x: encode each distinct prompt and negative prompt of the batch once (``kwargs`` loses
    ``prompt`` / ``negative_prompt`` and the pipeline gets the embeddings); other pipelines: nothing.

    A batch of the evaluations holds each prompt once per seed and the same empty negative prompt for
    every image, and the pipeline would encode all of them (the text encoder took a seventh of the
    world's sampling time on the 2-core CPU). The pipeline's own ``encode_prompt`` does the encoding, so
    textual-inversion tokens and the encoder's dtype are handled as in ``__call__``; each row is the row
    the pipeline would have computed (up to the float rounding of a smaller batch). Only the exact class
    is trusted: a subclass may encode differently.
    """
    from diffusers import StableDiffusionPipeline

    if type(pipe) is not StableDiffusionPipeline:
        return {}
    device = pipe._execution_device

    def encode(texts: list[str]) -> torch.Tensor:
        rows: dict[str, int] = {}
        index = [rows.setdefault(t, len(rows)) for t in texts]
        embeds, _ = pipe.encode_prompt(list(rows), device, 1, False)
        return embeds.index_select(0, torch.tensor(index, device=embeds.device))

    prompts = kwargs.pop("prompt")
    negatives = kwargs.pop("negative_prompt", None) or [""] * len(prompts)
    out = {"prompt_embeds": encode(prompts)}
    if kwargs["guidance_scale"] > 1:  # the pipeline's own test for classifier-free guidance
        out["negative_prompt_embeds"] = encode(negatives)
    return out


def warn_emulated_bf16(device: torch.device) -> None:
    """bf16 autocast on a CPU without native bf16 (no AMX / AVX-512-BF16) is emulated: the world's
    pipeline sampled 16 images 12x slower than in fp32 on a 2-core AVX2 AMD EPYC (70.5 s vs 5.8 s).
    Python's default filter shows it once per calling place; ``precision="auto"`` picks fp32 there."""
    from hirm.checks import native_bf16

    if device.type == "cpu" and not native_bf16(device):
        warnings.warn(
            "bf16 sampling on a CPU without native bf16 is emulated and much slower than fp32 (12x on the "
            "world's pipeline on an AVX2 CPU); use precision 'fp32' or 'auto'.",
            RuntimeWarning,
            stacklevel=3,
        )


def make_chunks(requests: Sequence[Request], batch_size: int) -> list[list[int]]:
    """Indices grouped by sampler settings (in first-seen order), cut into chunks of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.group(), []).append(i)
    return [idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]


def run_generation(
    pipe: Any,
    requests: Sequence[Request],
    *,
    score_fn: ScoreFn,
    batch_size: int = 16,
    cache: ImageCache | None = None,
    cache_extra: Mapping[str, Any] | None = None,
    keep: Sequence[int] = (),
    progress: bool = True,
    desc: str = "generate",
    thumbnail: int | None = None,
) -> tuple[list[Any], dict[int, np.ndarray], Timing]:
    """Generate (or read from ``cache``) every request, score it, and gather the results.

    Returns ``scores`` (one per request, in order), the uint8 images of the indices in ``keep`` (downscaled
    to at most ``thumbnail`` px on the longest side when given), and the time split. In a multi-process
    launch every process returns the full, identical result.
    """
    state = distributed_state()
    chunks = make_chunks(requests, batch_size)
    mine = chunks[state.process_index :: state.num_processes]
    keep_set, extra = set(keep), dict(cache_extra or {})
    local: list[tuple[int, Any, np.ndarray | None]] = []
    timing = Timing()
    bar = _progress(len(mine), desc, progress and state.is_main_process)
    for chunk in mine:
        images = _chunk_images(pipe, [requests[i] for i in chunk], cache, extra, timing)
        start = time.perf_counter()
        scores = score_fn(images)
        timing.score += time.perf_counter() - start
        if len(scores) != len(chunk):
            raise RuntimeError(f"score_fn returned {len(scores)} results for {len(chunk)} images.")
        local.extend(
            (i, s, shrink(images[j], thumbnail) if i in keep_set else None)
            for j, (i, s) in enumerate(zip(chunk, scores, strict=True))
        )
        bar.update(1)
    bar.close()
    gathered, timing = _gather(state, local, timing)
    out: list[Any] = [None] * len(requests)
    kept: dict[int, np.ndarray] = {}
    for i, score, image in gathered:
        out[i] = score
        if image is not None:
            kept[i] = image
    return out, kept, timing


def shrink(image: np.ndarray, size: int | None) -> np.ndarray:
    """``image`` (H, W, 3) uint8 downscaled (box filter) so that its longest side is at most ``size``."""
    if size is None or max(image.shape[:2]) <= size:
        return image
    picture = Image.fromarray(image)
    picture.thumbnail((size, size), Image.BOX)
    return np.asarray(picture).copy()


def _chunk_images(pipe, reqs: list[Request], cache, extra, timing: Timing) -> np.ndarray:
    found = [cache.get(r, extra) if cache is not None else None for r in reqs]
    missing = [j for j, img in enumerate(found) if img is None]
    if missing:
        start = time.perf_counter()
        fresh = generate_batch(pipe, [reqs[j] for j in missing])
        timing.generate += time.perf_counter() - start
        for j, img in zip(missing, fresh, strict=True):
            found[j] = img
            if cache is not None:
                cache.put(reqs[j], extra, img)
    timing.generated += len(missing)
    timing.cached += len(reqs) - len(missing)
    return np.stack(found)


def _gather(state, local, timing: Timing):
    if state.num_processes == 1:
        return local, timing
    from accelerate.utils import gather_object

    gathered = gather_object(local)
    timings = gather_object([asdict(timing)])
    total = Timing(**{k: sum(t[k] for t in timings) for k in asdict(timing)})
    return gathered, total


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
