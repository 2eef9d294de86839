"""Utility of an erased model (``hirm eval utility``): CLIP score and a Fréchet distance to the original.

* CLIP score: mean cosine similarity between the CLIP image embedding of each generated image and the
  text embedding of its prompt (HiRM's convention, ≈ 0.30 for SD 1.4 on COCO; ``clip_score_100`` is
  torchmetrics' ``100 * max(cos, 0)``).
* Fréchet distance: between the original model's and the erased model's images on the same prompts and
  seeds, on the same CLIP's image embeddings (HiRM computes FID against the original model's images, not
  real photos; this is that comparison on CLIP features instead of Inception features).

The CLIP model is a directory holding a transformers ``CLIPModel`` and its tokenizer (e.g. a local copy of
``openai/clip-vit-base-patch32``); by default the miniature world's MiniCLIP (``hirm.world.load_clip``).
Prompts: the package's 1,000-row COCO-10k subset by default (``--prompts`` for the full CSV).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hirm.evaluation.common import (
    EvaluationInputError,
    prepare_prompt_run,
    prompt_result,
    read_prompt_csv,
    resolve_device,
    write_result,
)
from hirm.evaluation.generation import Request, cache_extra, run_generation
from hirm.evaluation.judges import to_float_images
from hirm.evaluation.metrics import clip_scores, frechet_distance

#: 1,000 rows of COCO-10k (``coco_30k_10k.csv``), shipped with the package.
DEFAULT_PROMPTS = "coco_1k.csv"


class ClipScorer:
    """Image and text embeddings of a transformers ``CLIPModel``.

    Images: float (N, 3, H, W) in [0, 1] are resized (shorter side, bicubic, antialiased) and centre-cropped
    to the vision tower's size, then normalised with ``mean``/``std`` (MiniCLIP: 0.5/0.5, i.e. ``2x - 1``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        name: str = "clip",
    ) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.size = int(model.config.vision_config.image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, device: torch.device | str = "cpu") -> ClipScorer:
        """``path=None``: MiniCLIP. Otherwise a directory with a CLIPModel, its tokenizer and (optionally)
        ``preprocessor_config.json`` (its ``image_mean``/``image_std`` are used)."""
        if path is None:
            import hirm.world as world

            model, tokenizer = world.load_clip(device=device)
            return cls(model, tokenizer, name="MiniCLIP (hirm.world)")
        from transformers import AutoTokenizer, CLIPModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise EvaluationInputError(f"{path} is not a CLIPModel directory (no config.json).")
        from hirm.adapters.loading import load_kwargs, weight_files
        from hirm.io import read_json

        weight_files(path)  # safetensors only: a pickle-only directory is refused
        model = CLIPModel.from_pretrained(str(path), **load_kwargs(torch.float32)).to(device)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            cfg = read_json(pre, "a CLIP preprocessor config")
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        return cls(model, tokenizer, mean=mean, std=std, name=str(path))

    @torch.no_grad()
    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """float (N, 3, H, W) in [0, 1] -> float32 (N, D) image embeddings (un-normalised, on the CPU)."""
        x = _resize_crop(x, self.size)
        x = ((x - self.mean) / self.std).to(self.device)
        return _tensor(self.model.get_image_features(pixel_values=x)).float().cpu()

    def image_features(self, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, D) image embeddings (un-normalised)."""
        out = [
            self.embed_images(to_float_images(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str], *, batch_size: int = 128) -> np.ndarray:
        out = []
        max_len = min(int(getattr(self.tokenizer, "model_max_length", 77) or 77), 77)
        for start in range(0, len(prompts), batch_size):
            tok = self.tokenizer(
                list(prompts[start : start + batch_size]),
                padding="max_length",
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            ).to(self.device)
            out.append(
                _tensor(
                    self.model.get_text_features(
                        input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask")
                    )
                )
                .float()
                .cpu()
            )
        return torch.cat(out).numpy()


def _tensor(output: Any) -> torch.Tensor:
    """transformers 5 may return a model output instead of a tensor from ``get_*_features``."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise TypeError(f"Unexpected CLIP output {type(output).__name__}.")


def _resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size]


@dataclass(frozen=True)
class UtilitySettings:
    """Generation settings (``None`` size = pipeline default) and the prompt subset."""

    guidance_scale: float = 7.5
    num_inference_steps: int = 50
    height: int | None = None
    width: int | None = None
    batch_size: int = 16
    limit: int | None = None
    default_seed: int = 0


def evaluate_utility(
    model: str | os.PathLike = "minicanvas",
    *,
    patches: Sequence[Any] = (),
    clip: str | os.PathLike | ClipScorer | None = None,
    prompts: str | os.PathLike | None = None,
    settings: UtilitySettings | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """CLIP score of the erased model and its Fréchet distance to the original (see the module docstring)."""
    from hirm.evaluation.canvas import load_patches, make_cache, open_model, patched

    settings, prompts_path = prepare_prompt_run(
        settings, UtilitySettings, model, prompts, DEFAULT_PROMPTS, out=out, overwrite=overwrite
    )
    rows = read_prompt_csv(
        prompts_path,
        seed_column="evaluation_seed",
        guidance_column=None,
        default_seed=settings.default_seed,
        limit=settings.limit,
    )
    if len(rows) < 2:
        raise EvaluationInputError("The Fréchet distance needs at least 2 prompts (--limit >= 2).")
    dev = resolve_device(device)
    scorer = clip if isinstance(clip, ClipScorer) else ClipScorer.load(clip, device=dev)
    loaded, info = load_patches(patches)
    pipe, model_path = open_model(model, dev)
    cache = make_cache(cache_dir, model_path, use_cache)
    extra = cache_extra(pipe)
    requests = [
        Request(
            r.prompt,
            r.seed,
            settings.guidance_scale,
            settings.num_inference_steps,
            settings.height,
            settings.width,
        )
        for r in rows
    ]

    def score(images: np.ndarray) -> list:
        return list(scorer.image_features(images))

    original, _, t_orig = run_generation(
        pipe,
        requests,
        score_fn=score,
        batch_size=settings.batch_size,
        cache=cache,
        cache_extra=extra,
        progress=progress,
        desc="original",
    )
    erased, t_erased = original, t_orig
    if loaded:
        with patched(pipe, loaded):
            erased, _, t_erased = run_generation(
                pipe,
                requests,
                score_fn=score,
                batch_size=settings.batch_size,
                progress=progress,
                desc="erased",
            )
    text = torch.from_numpy(scorer.text_features([r.prompt for r in rows]))
    feats = {"original": torch.from_numpy(np.stack(original)), "erased": torch.from_numpy(np.stack(erased))}
    cos = {k: clip_scores(v, text) for k, v in feats.items()}
    recorded = {"clip": scorer.name, "scheduler": extra["scheduler"]}
    result = {
        **prompt_result("utility", model, model_path, info, settings, prompts_path, rows, recorded),
        "clip_model": scorer.name,
        "features": "CLIP image embeddings (projection output)",
        "n_prompts": len(rows),
        "clip_score": {k: float(v.mean()) for k, v in cos.items()},
        "clip_score_100": {k: float((100 * v.clamp(min=0)).mean()) for k, v in cos.items()},
        "frechet_distance": frechet_distance(feats["original"], feats["erased"]),
        "rows": [
            {
                "row": r.index,
                "prompt": r.prompt,
                "seed": r.seed,
                "clip_erased": float(cos["erased"][i]),
                "clip_original": float(cos["original"][i]),
            }
            for i, r in enumerate(rows)
        ],
        "timing": {"original": asdict(t_orig), "erased": asdict(t_erased)},
    }
    write_result(out, result, overwrite=overwrite)
    return result
