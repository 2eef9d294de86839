"""Shipped MiniCanvas weights: checksum verification and loaders.

Layout of ``src/hirm/world/assets/``::

    pipeline/        StableDiffusionPipeline directory (text_encoder, tokenizer, unet, vae, scheduler), fp16
    clip/            the rest of MiniCLIP: CLIPConfig + vision tower, both projections and logit scale
                     (its text tower is pipeline/text_encoder; load_clip assembles the CLIPModel)
    judges/style/    style judge   (model.safetensors + config.json)
    judges/object/   object judge  (model.safetensors + config.json)
    world.json       build seed, sizes, timings and measured figures
    checksums.json   sha256 of every other file
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hirm.io import sha256_file

PACKAGE_ASSETS = Path(__file__).resolve().parent / "assets"
REBUILD_HINT = (
    "Rebuild the world with `hirm world build --out .world_build --device cpu --install` "
    "(about an hour on a 2-core CPU), or restore the file from version control."
)
_verified: set[Path] = set()


class AssetError(RuntimeError):
    """A shipped MiniCanvas asset is missing or corrupted."""


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

    The weights ship in fp16 and load in ``dtype`` (float32 by default). Use it with
    :data:`hirm.world.GENERATION_DEFAULTS`, e.g. ``pipe(prompt, **GENERATION_DEFAULTS)``. ``root``: an
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


CLIP_REST = "model.safetensors"  # clip/: every CLIPModel tensor except the text tower's


def save_clip_rest(clip, directory: Path) -> None:
    """Write ``clip``'s config and every tensor but its text tower (which the pipeline ships) to ``directory``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    clip.config.to_json_file(str(directory / "config.json"))
    rest = {k: v.contiguous() for k, v in clip.state_dict().items() if not k.startswith("text_model.")}
    save_file(rest, str(directory / CLIP_REST), metadata={"format": "pt"})


def load_clip(*, device: str | torch.device = "cpu", root: Path | None = None):
    """MiniCLIP as ``(CLIPModel, CLIPTokenizer)`` in fp32 eval mode. Images go in as ``2 * x - 1``, x in [0, 1].

    The text tower is the pipeline's ``text_encoder`` (shipped once); ``clip/`` holds the rest. Every
    tensor of the assembled model is checked to be loaded (``strict=True``).
    """
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPTokenizer

    root = assets_dir(root)
    text = CLIPTextModel.from_pretrained(str(root / "pipeline" / "text_encoder"), dtype=torch.float32)
    # The config records the shipped dtype (fp16) and transformers builds the model in it: cast first,
    # then load, so the fp32 values are not rounded back to fp16 by load_state_dict's copy.
    model = CLIPModel(CLIPConfig.from_json_file(str(root / "clip" / "config.json"))).float()
    state = {f"text_model.{k.removeprefix('text_model.')}": v for k, v in text.state_dict().items()}
    state.update(load_file(str(root / "clip" / CLIP_REST)))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.to(device).eval(), CLIPTokenizer.from_pretrained(str(root / "pipeline" / "tokenizer"))


def load_judges(*, device: str | torch.device = "cpu", root: Path | None = None):
    """``{"style": Judge, "object": Judge}`` (see :class:`hirm.world.judges.Judge`)."""
    from .judges import Judge

    root = assets_dir(root)
    return {k: Judge.load(root / "judges" / k, device=device) for k in ("style", "object")}
