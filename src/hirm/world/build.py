"""Rebuild the whole MiniCanvas world from scratch: ``python -m hirm.world.build --out DIR``.

Stages (each writes ``DIR/<stage>/DONE.json`` when finished; training stages also keep resumable
checkpoints under ``DIR/ckpt/``, all safetensors + JSON, so an interrupted build resumes where it stopped):

1. ``data``      render the procedural training pool (every style x object, ``pool_per_pair`` seeds)
2. ``tokenizer`` CLIP-format BPE tokenizer learned on the training captions
3. ``clip``      MiniCLIP (CLIPModel) trained contrastively
4. ``judges``    style and object CNN judges
5. ``vae``       AutoencoderKL 32x32x3 <-> 16x16x4
6. ``unet``      UNet2DConditionModel on the frozen MiniCLIP text encoder
7. ``assemble``  StableDiffusionPipeline + CLIP + judges as fp16 safetensors with checksums in ``DIR/assets``

``--install`` then copies ``DIR/assets`` into the package (``src/hirm/world/assets``).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .assets import PACKAGE_ASSETS, write_checksums
from .clip import ClipTrainConfig
from .concepts import GENERATION_DEFAULTS, OBJECTS, STYLES
from .judges import JudgeConfig
from .unet import UnetConfig
from .vae import VaeConfig

STAGES: tuple[str, ...] = ("data", "tokenizer", "clip", "judges", "vae", "unet", "assemble")
FRESH_SEED0 = 1_000_000_000  # seeds of "fresh" evaluation renders; the pool uses seeds < 10^8
SHARD = "8MB"  # largest shipped weight file


@dataclass(frozen=True)
class BuildConfig:
    """Everything that sizes a build (the ``full`` preset is the shipped world)."""

    pool_per_pair: int = 96
    vocab_size: int = 8192
    clip: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    style_judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(steps=500))
    object_judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(steps=2500))
    vae: VaeConfig = field(default_factory=VaeConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)
    fresh_per_pair: int = 2
    # clip.equalize_block0 factor applied to the shipped text encoder: 3 = CLIP ViT-L/14's width over
    # MiniCLIP's (768 / 256), so that a reference-lr Adam step moves block 0 as much as on SD's encoder.
    block0_fan_in: float = 3.0


PRESETS: dict[str, BuildConfig] = {
    "full": BuildConfig(),  # sizes/steps: see the *Config dataclasses' defaults
    "tiny": BuildConfig(
        pool_per_pair=1,
        vocab_size=1200,
        clip=ClipTrainConfig(
            text_hidden=32,
            text_layers=4,
            text_heads=2,
            vision_hidden=32,
            vision_layers=1,
            vision_heads=2,
            projection_dim=16,
            batch_size=16,
            corpus_batch_size=8,
            steps=3,
            warmup=1,
            vision_steps=2,
        ),
        style_judge=JudgeConfig(widths=(8, 16), batch_size=16, steps=3),
        object_judge=JudgeConfig(widths=(8, 16), batch_size=16, steps=3),
        vae=VaeConfig(block_out_channels=(8, 16), norm_num_groups=4, batch_size=8, steps=3),
        unet=UnetConfig(
            block_out_channels=(16, 32),
            attention_heads=2,
            norm_num_groups=8,
            batch_size=8,
            steps=3,
            warmup=1,
            captions_per_pair=2,
            swaps_per_pair=1,
            pad_donors=16,
        ),
        fresh_per_pair=1,
    ),
}


# What each stage's result depends on: its own config fields and the stages it reads.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "data": ("pool_per_pair",),
    "tokenizer": ("vocab_size",),
    "clip": ("clip",),
    "judges": ("style_judge", "object_judge", "fresh_per_pair"),
    "vae": ("vae",),
    "unet": ("unet",),
    "assemble": ("block0_fan_in",),
}
STAGE_DEPS: dict[str, tuple[str, ...]] = {
    "data": (),
    "tokenizer": (),
    "clip": ("data", "tokenizer"),
    "judges": ("data",),
    "vae": ("data",),
    "unet": ("data", "tokenizer", "clip", "vae"),
    "assemble": ("data", "tokenizer", "clip", "judges", "vae", "unet"),
}
# Checkpoint paths under DIR/ckpt/ that belong to each stage (resumable scratch).
STAGE_CKPTS: dict[str, tuple[str, ...]] = {
    "clip": ("clip", "clip_vision"),
    "judges": ("judge_style", "judge_object"),
    "vae": ("vae",),
    "unet": ("unet", "text_cond.safetensors"),
}


def stage_digest(name: str, cfg: BuildConfig, seed: int) -> str:
    """A short hash of everything that decides stage ``name``'s output (its settings, its inputs', seed)."""
    import hashlib

    own = {k: asdict(cfg)[k] for k in STAGE_INPUTS[name]}
    deps = {d: stage_digest(d, cfg, seed) for d in STAGE_DEPS[name]}
    world = {"styles": STYLES, "objects": OBJECTS}
    if name in TEXT_STAGES:
        world["text"] = _text_digest()
    payload = json.dumps(
        {
            "seed": seed,
            "stage": name,
            "own": own,
            "deps": deps,
            "world": world,
            **({"recipe": STAGE_RECIPE[name]} if name in STAGE_RECIPE else {}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Bumped when a stage's code changes what it produces from the same settings (a finished stage of an older
# recipe is then rebuilt, not silently reused); a stage without an entry is at its first recipe.
# tokenizer 2: the deterministic BPE trainer.
STAGE_RECIPE: dict[str, int] = {"tokenizer": 2}
# Stages that read the captions or the language corpus (their synonyms and templates too).
TEXT_STAGES = frozenset({"tokenizer", "clip", "unet"})


@functools.cache
def _text_digest() -> str:
    """Hash of every text the world is trained on (captions with their synonyms and templates, corpus)."""
    import hashlib

    from .captions import all_captions, corpus_texts

    return hashlib.sha256("\n".join(all_captions() + corpus_texts()).encode()).hexdigest()[:16]


def _done(stage_dir: Path) -> dict | None:
    f = stage_dir / "DONE.json"
    return json.loads(f.read_text()) if f.exists() else None


def _mark_done(stage_dir: Path, info: dict) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "DONE.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def _pool(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = load_file(str(out / "data" / "pool.safetensors"))
    return t["images"].numpy(), t["style"].numpy(), t["object"].numpy()


def _fresh(cfg: BuildConfig, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    from ._train import to_float_images
    from .rendering import render_grid

    imgs, s, o = render_grid(cfg.fresh_per_pair, seed0=FRESH_SEED0 + 1000 * seed)
    return to_float_images(imgs), s, o


# ----------------------------------------------------------------------------- stages
def stage_data(out: Path, cfg: BuildConfig, seed: int, device: torch.device, progress: bool) -> dict:
    from .rendering import render_grid

    imgs, s, o = render_grid(cfg.pool_per_pair, seed0=seed * 100_000)
    (out / "data").mkdir(parents=True, exist_ok=True)
    tensors = {"images": torch.from_numpy(imgs), "style": torch.from_numpy(s), "object": torch.from_numpy(o)}
    save_file(tensors, str(out / "data" / "pool.safetensors"))
    return {"images": len(imgs)}


def stage_tokenizer(out: Path, cfg: BuildConfig, seed: int, device: torch.device, progress: bool) -> dict:
    from .tokenizer import load_tokenizer, train_tokenizer

    train_tokenizer(out / "tokenizer", vocab_size=cfg.vocab_size)
    return {"vocab_size": len(load_tokenizer(out / "tokenizer"))}


def stage_clip(out: Path, cfg: BuildConfig, seed: int, device: torch.device, progress: bool) -> dict:
    from .clip import train_clip, zero_shot_report
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(out / "tokenizer")
    imgs, s, o = _pool(out)
    model = train_clip(
        out / "clip",
        tokenizer=tok,
        images=imgs,
        style_idx=s,
        object_idx=o,
        cfg=cfg.clip,
        seed=seed,
        device=device,
        ckpt_dir=out / "ckpt" / "clip",
        progress=progress,
    )
    x, fs, fo = _fresh(cfg, seed)
    return zero_shot_report(model, tok, x, fs, fo, device=device)


def stage_judges(out: Path, cfg: BuildConfig, seed: int, device: torch.device, progress: bool) -> dict:
    from .judges import judge_accuracy, train_judge

    imgs, s, o = _pool(out)
    x, fs, fo = _fresh(cfg, seed)
    info = {}
    for kind, labels, fresh, jcfg in (("style", s, fs, cfg.style_judge), ("object", o, fo, cfg.object_judge)):
        judge = train_judge(
            kind,
            images=imgs,
            labels=labels,
            cfg=jcfg,
            seed=seed,
            device=device,
            ckpt_dir=out / "ckpt" / f"judge_{kind}",
            progress=progress,
        )
        judge.save(out / "judges" / kind)
        info[f"{kind}_fresh_acc"] = judge_accuracy(judge, x, fresh)
    return info


def stage_vae(out: Path, cfg: BuildConfig, seed: int, device: torch.device, progress: bool) -> dict:
    from .judges import Judge, judge_accuracy
    from .vae import train_vae

    imgs, _, _ = _pool(out)
    vae = train_vae(
        out / "vae",
        images=imgs,
        cfg=cfg.vae,
        seed=seed,
        device=device,
        ckpt_dir=out / "ckpt" / "vae",
        progress=progress,
    )
    x, fs, fo = _fresh(cfg, seed)
    with torch.no_grad():
        rec = torch.cat([vae(x[i : i + 256].to(device) * 2 - 1).sample for i in range(0, len(x), 256)])
    rec = (rec / 2 + 0.5).clamp(0, 1).cpu()
    info = {"recon_mse": float(((rec - x) ** 2).mean()), "scaling_factor": vae.config.scaling_factor}
    for kind, labels in (("style", fs), ("object", fo)):
        info[f"judge_{kind}_acc_on_recon"] = judge_accuracy(
            Judge.load(out / "judges" / kind, device=device), rec, labels
        )
    return info


def stage_unet(out: Path, cfg: BuildConfig, seed: int, device: torch.device, progress: bool) -> dict:
    from diffusers import AutoencoderKL
    from transformers import CLIPModel

    from .tokenizer import load_tokenizer
    from .unet import TextConditioning, make_text_conditioning, train_unet
    from .vae import encode_pool

    cond_path = out / "ckpt" / "text_cond.safetensors"
    if cond_path.exists():
        text = TextConditioning.load(cond_path)
    else:
        tok = load_tokenizer(out / "tokenizer")
        text_encoder = _text_encoder(CLIPModel.from_pretrained(str(out / "clip"))).to(device).eval()
        text = make_text_conditioning(
            text_encoder, tok, cfg=cfg.unet, seed=seed, device=device, progress=progress
        )
        text.save(cond_path)
    vae = AutoencoderKL.from_pretrained(str(out / "vae")).to(device).eval()
    imgs, s, o = _pool(out)
    mean, std = encode_pool(vae, imgs, device=device)
    train_unet(
        out / "unet",
        latent_mean=mean,
        latent_std=std,
        scaling_factor=vae.config.scaling_factor,
        style_idx=s,
        object_idx=o,
        text=text,
        cfg=cfg.unet,
        seed=seed,
        device=device,
        ckpt_dir=out / "ckpt" / "unet",
        progress=progress,
    )
    return {
        "table_captions": int(text.pair_entries.size),
        "swap_entries": int((text.swap_base >= 0).sum()),
        "pad_donors": len(text.donor_eot),
    }


def _text_encoder(clip):  # CLIPModel -> CLIPTextModel with the same weights
    from transformers import CLIPTextModel

    te = CLIPTextModel(clip.config.text_config)
    te.load_state_dict(clip.text_model.state_dict())
    return te


def stage_assemble(out: Path, cfg: BuildConfig, seed: int, device: torch.device, progress: bool) -> dict:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPModel

    from .assets import save_clip_rest
    from .clip import equalize_block0
    from .judges import Judge
    from .tokenizer import load_tokenizer
    from .unet import ddim_scheduler

    dst = out / "assets"
    if dst.exists():
        shutil.rmtree(dst)
    clip = CLIPModel.from_pretrained(str(out / "clip"))
    if cfg.block0_fan_in != 1.0:  # function-preserving; see clip.equalize_block0
        equalize_block0(clip.text_model, cfg.block0_fan_in)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(str(out / "vae")),
        text_encoder=_text_encoder(clip),
        tokenizer=load_tokenizer(out / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(str(out / "unet")),
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # Everything ships in fp16 (loaders upcast with `dtype=torch.float32`, as for most published SD
    # checkpoints); weight files are sharded at SHARD (8 MB) each.
    pipe.to(torch.float16)
    pipe.save_pretrained(str(dst / "pipeline"), safe_serialization=True, max_shard_size=SHARD)
    tok_dir = dst / "pipeline" / "tokenizer"  # ship CLIP's standard files (vocab.json + merges.txt)
    shutil.rmtree(tok_dir)
    shutil.copytree(out / "tokenizer", tok_dir, ignore=shutil.ignore_patterns("DONE.json"))
    save_clip_rest(clip.half(), dst / "clip")
    for kind in ("style", "object"):
        judge = Judge.load(out / "judges" / kind)
        judge.net.half()
        judge.save(dst / "judges" / kind)
    stages = {s: _done(out / s) for s in STAGES[:-1]}
    world = {
        "seed": seed,
        "config": asdict(cfg),
        "styles": list(STYLES),
        "objects": list(OBJECTS),
        "generation_defaults": GENERATION_DEFAULTS,
        "stages": stages,
        "versions": {
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
        },
    }
    (dst / "world.json").write_text(json.dumps(world, indent=2, sort_keys=True))
    sums = write_checksums(dst)
    return {"files": len(sums), "bytes": sum((dst / f).stat().st_size for f in sums)}


STAGE_FNS = {
    "data": stage_data,
    "tokenizer": stage_tokenizer,
    "clip": stage_clip,
    "judges": stage_judges,
    "vae": stage_vae,
    "unet": stage_unet,
    "assemble": stage_assemble,
}


def build_world(
    out_dir: str | Path,
    *,
    seed: int = 0,
    preset: str = "full",
    config: BuildConfig | None = None,
    stages: tuple[str, ...] | None = None,
    device: str | torch.device = "cpu",
    install: bool = False,
    progress: bool = True,
) -> Path:
    """Build (or resume building) the MiniCanvas world into ``out_dir``; returns ``out_dir/assets``.

    Args:
        out_dir: build directory (stage outputs, checkpoints, and finally ``assets/``).
        seed: global seed; the same seed on the same machine reproduces the same weights.
        preset: ``"full"`` (the shipped world) or ``"tiny"`` (seconds; for tests).
        config: overrides ``preset`` entirely.
        stages: run only these stages (their prerequisites must be done); default all, in order.
        device: torch device for training.
        install: copy ``out_dir/assets`` into the package (``src/hirm/world/assets``) at the end.
        progress: show tqdm progress bars.
    """
    out = Path(out_dir)
    if preset not in PRESETS and config is None:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = config or PRESETS[preset]
    dev = torch.device(device)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "build.json"
    if meta_path.exists() and json.loads(meta_path.read_text())["seed"] != seed:
        raise ValueError(f"{out} holds a build with another seed; use a fresh --out directory")
    meta_path.write_text(json.dumps({"seed": seed, "config": asdict(cfg)}, indent=2, sort_keys=True))
    for name in stages or STAGES:
        if name not in STAGE_FNS:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        digest = stage_digest(name, cfg, seed)
        done = _done(out / name)
        if done is not None and name != "assemble":
            if done.get("digest") != digest:
                raise ValueError(
                    f"Stage {name!r} in {out} was built with other settings (or by an older version). "
                    f"Remove {out / name} and its checkpoints under {out / 'ckpt'} to rebuild it (and the "
                    "stages that depend on it), or use a fresh --out directory."
                )
            print(f"[world] stage {name}: done, skipping", flush=True)
            continue
        _discard_stale_checkpoints(out, name, digest)
        print(f"[world] stage {name}: running", flush=True)
        t0, c0 = time.time(), time.process_time()
        info = STAGE_FNS[name](out, cfg, seed, dev, progress)
        info.update(
            wall_s=round(time.time() - t0, 1), cpu_s=round(time.process_time() - c0, 1), digest=digest
        )
        _mark_done(out / name, info)
        print(f"[world] stage {name}: {json.dumps(info)}", flush=True)
    if install:
        install_assets(out / "assets")
    return out / "assets"


def _discard_stale_checkpoints(out: Path, name: str, digest: str) -> None:
    """Checkpoints left by an interrupted run with other settings cannot be resumed: remove them."""
    marker = out / "ckpt" / f"{name}.digest"
    paths = [out / "ckpt" / p for p in STAGE_CKPTS.get(name, ())]
    if (
        marker.exists()
        and marker.read_text().strip() != digest
        or not marker.exists()
        and any(p.exists() for p in paths)
    ):
        print(f"[world] stage {name}: discarding checkpoints made with other settings", flush=True)
        for p in paths:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest)


def install_assets(src: Path, dst: Path = PACKAGE_ASSETS) -> None:
    """Replace the package's assets with a built ``assets`` directory."""
    if not (src / "checksums.json").exists():
        raise FileNotFoundError(f"{src} is not a finished assets directory (no checksums.json)")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def main(argv: list[str] | None = None) -> None:
    """``python -m hirm.world.build ARGS`` runs ``hirm world build ARGS`` (the one world-build command).

    The spellings of earlier versions still work: ``--stages a b`` (now ``--stage a --stage b``) and
    ``--no-progress`` (now ``--quiet``).
    """
    import sys

    from hirm.cli.world import build_main

    legacy = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    legacy.add_argument("--stages", nargs="+", default=[])
    legacy.add_argument("--no-progress", action="store_true")
    old, rest = legacy.parse_known_args(sys.argv[1:] if argv is None else argv)
    args = [
        *rest,
        *(a for s in old.stages for a in ("--stage", s)),
        *(["--quiet"] if old.no_progress else []),
    ]
    build_main(args)


if __name__ == "__main__":
    main()
