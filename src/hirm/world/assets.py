"""Shipped MiniCanvas weights: checksum verification and loaders.

Layout of ``src/hirm/world/assets/``::

    pipeline/        StableDiffusionPipeline directory (text_encoder, tokenizer, unet, vae, scheduler)
    clip/            MiniCLIP (transformers CLIPModel; its text tower is pipeline/text_encoder)
    judges/style/    style judge   (model.safetensors + config.json)
    judges/object/   object judge  (model.safetensors + config.json)
    world.json       build seed, sizes, timings and measured figures
    checksums.json   sha256 of every other file
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

PACKAGE_ASSETS = Path(__file__).resolve().parent / "assets"
REBUILD_HINT = (
    "Rebuild the world with `hirm world build --out .world_build --device cpu --install` "
    "(about an hour on a 2-core CPU), or restore the file from version control."
)
_verified: set[Path] = set()


class AssetError(RuntimeError):
    """A shipped MiniCanvas asset is missing or corrupted."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(root: Path) -> dict[str, str]:
    """Write ``root/checksums.json`` covering every file under ``root`` (posix relative paths)."""
    sums = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "checksums.json"
    }
    (root / "checksums.json").write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return sums


def verify_assets(root: Path) -> None:
    """Check every file listed in ``root/checksums.json``.

    Raises:
        AssetError: naming the first missing or corrupted file and how to rebuild.
    """
    listing = root / "checksums.json"
    if not listing.is_file():
        raise AssetError(f"MiniCanvas assets incomplete: {listing} is missing. {REBUILD_HINT}")
    sums: dict[str, str] = json.loads(listing.read_text())
    for rel, expected in sums.items():
        path = root / rel
        if not path.is_file():
            raise AssetError(f"MiniCanvas asset missing: {path}. {REBUILD_HINT}")
        if sha256_file(path) != expected:
            raise AssetError(f"MiniCanvas asset corrupted (sha256 mismatch): {path}. {REBUILD_HINT}")


def assets_dir(root: Path | None = None) -> Path:
    """The assets directory (default: the one shipped in the package), verified once per process."""
    root = (root or PACKAGE_ASSETS).resolve()
    if root not in _verified:
        verify_assets(root)
        _verified.add(root)
    return root


def pipeline_dir(root: Path | None = None) -> Path:
    """The ``StableDiffusionPipeline`` directory inside the assets (default: the shipped ones)."""
    return assets_dir(root) / "pipeline"


def load_pipeline(
    *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, root: Path | None = None
):
    """The MiniSD ``StableDiffusionPipeline`` (DDIM scheduler, no safety checker) on ``device``.

    Use it with :data:`hirm.world.GENERATION_DEFAULTS`, e.g. ``pipe(prompt, **GENERATION_DEFAULTS)``. ``root``: an
    assets directory other than the shipped one (e.g. a fresh build's ``DIR/assets``).
    """
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(pipeline_dir(root)),
        dtype=dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.to(device)


def load_clip(*, device: str | torch.device = "cpu"):
    """MiniCLIP as ``(CLIPModel, CLIPTokenizer)`` in fp32 eval mode. Images go in as ``2 * x - 1``, x in [0, 1]."""
    from transformers import CLIPModel, CLIPTokenizer

    root = assets_dir()
    model = CLIPModel.from_pretrained(str(root / "clip"), dtype=torch.float32).to(device).eval()
    return model, CLIPTokenizer.from_pretrained(str(root / "pipeline" / "tokenizer"))


def load_judges(*, device: str | torch.device = "cpu", root: Path | None = None):
    """``{"style": Judge, "object": Judge}`` (see :class:`hirm.world.judges.Judge`)."""
    from .judges import Judge

    root = assets_dir(root)
    return {k: Judge.load(root / "judges" / k, device=device) for k in ("style", "object")}
