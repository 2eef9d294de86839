"""Judges for real pipelines, loaded from a short spec (``hirm eval canvas --judge SPEC``).

Two kinds (both follow :class:`hirm.evaluation.judges.Judge`: float images (N, 3, H, W) in [0, 1] in,
class probabilities (N, C) out):

* ``PATH`` or ``classifier:PATH`` — a transformers image-classification directory, the standard layout
  of a fine-tuned classifier: ``config.json`` (architecture and ``id2label``, the class names),
  ``model.safetensors`` and ``preprocessor_config.json`` (input size, mean, std; required, so that an
  image is never normalised by guess). Loaded with ``AutoModelForImageClassification``, safetensors
  only. UnlearnCanvas's ViT-Large style (51 classes) and object (20 classes) classifiers become such
  directories with ``scripts/convert_unlearncanvas_classifier.py`` (docs/real-models.md).
* ``clip:PATH`` — zero-shot CLIP from a local ``CLIPModel`` directory (with its tokenizer and, for real
  CLIPs, ``preprocessor_config.json``): each class is a prompt (styles: ``"an image in {name} style"``,
  objects: ``"a photo of {name}"``, UnlearnCanvas's photo class ``Seed_Images``: ``"a photo"``); the
  probabilities are the softmax of CLIP's scaled cosine similarities. A zero-shot judge is weaker than a
  trained classifier (ours, not UnlearnCanvas's protocol): report which judge gave a number.
* ``world`` — the miniature world's own judge of that domain.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hirm.evaluation.canvas_grid import PHOTO_CLASS, Canvas
from hirm.evaluation.common import EvaluationInputError, concept_key, display_name
from hirm.evaluation.judges import Judge

#: Zero-shot class prompts, per domain; ``{name}`` is the concept written with spaces.
CLIP_PROMPTS: dict[str, str] = {"style": "an image in {name} style", "object": "a photo of {name}"}
#: The zero-shot prompt of UnlearnCanvas's photo class (unstyled seed photographs).
PHOTO_PROMPT = "a photo"
#: ``preprocessor_config.json`` ``resample`` codes (PIL) -> ``torch.nn.functional.interpolate`` modes.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}

SPEC_HELP = (
    "clip:PATH (zero-shot, a local CLIPModel directory), PATH or classifier:PATH (a transformers "
    "image-classification directory: config.json with id2label, model.safetensors, preprocessor_config.json), "
    "or world (the miniature world's judge)."
)


class ClassifierJudge:
    """A transformers image classifier (``AutoModelForImageClassification``) as a judge.

    Images (N, 3, H, W) in [0, 1] are resized to ``size`` = (h, w) (or, with ``crop``, resized on their
    shorter side to ``shortest`` and centre-cropped to ``crop``), normalised with ``mean``/``std``, and
    classified; returns softmax probabilities (N, C) over ``classes`` (the model's ``id2label``).
    """

    def __init__(
        self,
        model: Any,
        *,
        size: tuple[int, int] | None,
        shortest: int | None = None,
        crop: tuple[int, int] | None = None,
        mean: Sequence[float],
        std: Sequence[float],
        resample: str = "bilinear",
        name: str = "classifier",
    ) -> None:
        if (size is None) == (shortest is None):
            raise EvaluationInputError(
                "A classifier judge needs either a (height, width) or a shortest side."
            )
        self.model, self.name, self.resample = model.eval(), name, resample
        self.size, self.shortest, self.crop = size, shortest, crop
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        labels = model.config.id2label
        self.classes = tuple(str(labels[i]) for i in range(int(model.config.num_labels)))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> ClassifierJudge:
        """From a directory (see the module docstring); float32, on ``device``."""
        from transformers import AutoModelForImageClassification

        from hirm.adapters.loading import load_kwargs, weight_files
        from hirm.io import read_json

        path = Path(path)
        for name in ("config.json", "preprocessor_config.json"):
            if not (path / name).is_file():
                raise EvaluationInputError(
                    f"{path} is not an image-classification directory: it has no {name}. "
                    "See docs/real-models.md (scripts/convert_unlearncanvas_classifier.py writes one)."
                )
        weight_files(path)  # safetensors only; a pickle-only directory is refused with what to do
        model = AutoModelForImageClassification.from_pretrained(str(path), **load_kwargs(torch.float32))
        return cls(
            model.to(device),
            name=f"classifier {path}",
            **preprocessing(read_json(path / "preprocessor_config.json", "a preprocessor config")),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> the model's normalised input (N, 3, h, w)."""
        mode = {"mode": self.resample, "antialias": self.resample != "nearest"}
        if self.size is not None:
            x = F.interpolate(images, size=self.size, **mode)
        else:
            h, w = images.shape[-2:]
            scale = self.shortest / min(h, w)
            x = F.interpolate(images, size=(max(1, round(h * scale)), max(1, round(w * scale))), **mode)
            if self.crop is not None:
                ch, cw = self.crop
                top, left = (x.shape[-2] - ch) // 2, (x.shape[-1] - cw) // 2
                x = x[..., top : top + ch, left : left + cw]
        return (x.clamp(0, 1) - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        logits = self.model(pixel_values=self.prepare(images.float()).to(self.device)).logits
        return logits.float().softmax(-1).cpu()


def preprocessing(config: Mapping[str, Any]) -> dict[str, Any]:
    """``ClassifierJudge`` keyword arguments from a ``preprocessor_config.json`` (ViT/CLIP image processors).

    ``size`` ``{"height", "width"}`` is an exact resize (UnlearnCanvas: 224 x 224); ``{"shortest_edge"}``
    resizes the shorter side, then ``crop_size`` is centre-cropped when ``do_center_crop``.
    """
    size = config.get("size", {})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    kwargs: dict[str, Any] = {"size": None}
    if "height" in size and "width" in size:
        kwargs["size"] = (int(size["height"]), int(size["width"]))
    elif "shortest_edge" in size:
        kwargs["shortest"] = int(size["shortest_edge"])
        crop = config.get("crop_size")
        if config.get("do_center_crop", crop is not None) and crop is not None:
            crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
            kwargs["crop"] = (int(crop["height"]), int(crop["width"]))
    else:
        raise EvaluationInputError(
            f"preprocessor_config.json: cannot read the input size from size={size!r}."
        )
    resample = config.get("resample", 2)
    if resample not in RESAMPLE:
        raise EvaluationInputError(
            f"preprocessor_config.json: resample={resample!r} is not supported; use one of {sorted(RESAMPLE)}."
        )
    kwargs["resample"] = RESAMPLE[resample]
    if config.get("do_normalize", True):
        kwargs["mean"], kwargs["std"] = (
            config.get("image_mean", [0.5] * 3),
            config.get("image_std", [0.5] * 3),
        )
    else:
        kwargs["mean"], kwargs["std"] = [0.0] * 3, [1.0] * 3
    return kwargs


class ClipJudge:
    """Zero-shot judge: softmax over classes of CLIP's scaled cosine similarity between the image and
    each class prompt. ``prompts[i]`` describes ``classes[i]``."""

    def __init__(self, scorer: Any, classes: Sequence[str], prompts: Sequence[str]) -> None:
        if len(classes) != len(prompts):
            raise EvaluationInputError(f"{len(classes)} classes but {len(prompts)} prompts.")
        self.scorer, self.classes, self.prompts = scorer, tuple(classes), tuple(prompts)
        self.name = f"zero-shot CLIP {scorer.name}"
        self.text = F.normalize(torch.from_numpy(scorer.text_features(self.prompts)), dim=-1)  # (C, D)
        self.scale = float(scorer.model.logit_scale.detach().exp())

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        image = F.normalize(self.scorer.embed_images(images.float()), dim=-1)  # (N, D)
        return (self.scale * image @ self.text.T).softmax(-1)  # (N, C)


def class_prompts(names: Sequence[str], domain: str, template: str | None = None) -> list[str]:
    """The zero-shot prompt of each concept of ``domain`` (the photo class: :data:`PHOTO_PROMPT`)."""
    template = template or CLIP_PROMPTS[domain]
    if "{name}" not in template:
        raise EvaluationInputError(f"A class prompt template needs {{name}}, got {template!r}.")
    return [
        PHOTO_PROMPT if concept_key(n) == concept_key(PHOTO_CLASS) else template.format(name=display_name(n))
        for n in names
    ]


def load_judges(
    specs: Mapping[str, str],
    canvas: Canvas,
    *,
    device: str | torch.device = "cpu",
    prompts: Mapping[str, str | None] | None = None,
) -> dict[str, Judge]:
    """``{"style": SPEC, "object": SPEC}`` -> judges (a CLIP directory named twice is loaded once).

    ``prompts`` overrides the zero-shot prompt template of a domain (``{name}``).
    """
    from hirm.evaluation.utility import ClipScorer

    scorers: dict[str, Any] = {}
    judges: dict[str, Judge] = {}
    for domain in ("style", "object"):
        spec = specs.get(domain)
        if not spec:
            raise EvaluationInputError(f"No {domain} judge: give --judge or --{domain}-judge ({SPEC_HELP})")
        kind, _, rest = spec.partition(":")
        if kind == "clip" and rest:
            scorer = scorers.get(rest) or ClipScorer.load(rest, device=device)
            scorers[rest] = scorer
            names = canvas.names(domain)  # type: ignore[arg-type]
            judges[domain] = ClipJudge(
                scorer, names, class_prompts(names, domain, (prompts or {}).get(domain))
            )
        elif spec == "world":
            import hirm.world as world

            judges[domain] = world.load_judges(device=device)[domain]
        else:
            judges[domain] = ClassifierJudge.load(
                rest if kind == "classifier" and rest else spec, device=device
            )
    return judges


def judge_name(judge: Any) -> str:
    """How a result file names a judge."""
    if type(judge).__module__ == "hirm.world.judges":
        return "MiniCanvas judge (hirm.world)"
    return str(getattr(judge, "name", None) or type(judge).__name__)
