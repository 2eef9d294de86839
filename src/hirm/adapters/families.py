"""Model families: which components of a diffusers pipeline are CLIP text encoders HiRM can edit.

Detection reads ``model_index.json``'s ``_class_name``. T5 encoders (SD3, Flux) are never edited.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """A supported model family.

    Attributes:
        name: short name (``sd``, ``sdxl``, ``sd3``, ``flux``, ``text-encoder``).
        clip: (encoder component, tokenizer component) pairs of the CLIP text encoders.
        untouched: other text encoders (T5) that HiRM leaves as they are.
        denoiser: the denoiser component (``unet`` or ``transformer``), if any.
    """

    name: str
    clip: tuple[tuple[str, str], ...]
    untouched: tuple[str, ...] = ()
    denoiser: str | None = None

    @property
    def encoders(self) -> tuple[str, ...]:
        return tuple(encoder for encoder, _ in self.clip)

    def tokenizer_for(self, encoder: str) -> str:
        for enc, tok in self.clip:
            if enc == encoder:
                return tok
        raise ValueError(
            f"{encoder!r} is not a CLIP text encoder of the {self.name} family; it has {self.encoders}."
        )


SD = Family("sd", clip=(("text_encoder", "tokenizer"),), denoiser="unet")
SDXL = Family(
    "sdxl", clip=(("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")), denoiser="unet"
)
SD3 = Family(
    "sd3",
    clip=(("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")),
    untouched=("text_encoder_3",),
    denoiser="transformer",
)
FLUX = Family(
    "flux", clip=(("text_encoder", "tokenizer"),), untouched=("text_encoder_2",), denoiser="transformer"
)

#: Pipeline class-name prefixes, most specific first.
_PREFIXES: tuple[tuple[str, Family], ...] = (
    ("StableDiffusionXL", SDXL),
    ("StableDiffusion3", SD3),
    ("Flux", FLUX),
    ("StableDiffusion", SD),
)

SUPPORTED = "Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux pipelines, or a bare CLIP text-encoder directory"


class UnsupportedModelError(ValueError):
    """The model is not one of the supported families."""


def family_for_pipeline(class_name: str) -> Family:
    for prefix, family in _PREFIXES:
        if class_name.startswith(prefix):
            return family
    raise UnsupportedModelError(f"Unsupported pipeline {class_name!r}. hirm supports {SUPPORTED}.")


def text_encoder_family(component: str) -> Family:
    """A bare text encoder, named like the pipeline component it came from (``text_encoder``, ``text_encoder_2``)."""
    tokenizer = component.replace("text_encoder", "tokenizer")
    return Family("text-encoder", clip=((component, tokenizer),))
