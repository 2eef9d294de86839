"""The Python API: load -> erase -> save patch -> apply -> generate.

>>> import hirm
>>> patch = hirm.erase("minicanvas", ["Cats"])                  # HiRM-R, reference defaults
>>> patch.save("cats.safetensors")
>>> pipe = hirm.load_pipeline("minicanvas", patches=["cats.safetensors"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hirm.adapters.loading import EMBEDDED, ModelHandle, load_model
from hirm.core.config import Concept, ConceptKind, PromptTarget, RandomTarget
from hirm.core.patch import Patch, apply_patches
from hirm.core.registry import get_method
from hirm.io import atomic_path

PatchLike = Patch | str | os.PathLike


def concept(text: str, *, kind: ConceptKind = "object", super_category: str | None = None) -> Concept:
    """A concept with the HiRM-R target, or HiRM-S toward ``super_category`` when given."""
    target = PromptTarget(super_category) if super_category else RandomTarget()
    return Concept(text=text, kind=kind, target=target)


def _concepts(concepts: Sequence[Concept | str] | Concept | str, kind: ConceptKind) -> list[Concept]:
    items = [concepts] if isinstance(concepts, (str, Concept)) else list(concepts)
    if not items:
        raise ValueError("Give at least one concept to erase.")
    return [c if isinstance(c, Concept) else Concept(text=c, kind=kind) for c in items]


def erase(
    model: str | os.PathLike | ModelHandle = EMBEDDED,
    concepts: Sequence[Concept | str] | Concept | str = (),
    *,
    method: str = "hirm",
    config: Any = None,
    kind: ConceptKind = "object",
    components: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Patch:
    """Erase ``concepts`` from ``model`` with ``method`` and return the patch (nothing is written).

    Args:
        model: ``"minicanvas"``, a pipeline or text-encoder directory, a hub id, or a loaded handle.
        concepts: strings (of kind ``kind``, HiRM-R target) or :class:`Concept` objects.
        method: a registered method name (``hirm.methods()`` lists them).
        config: the method's config; ``None`` = its defaults (for HiRM: the reference behaviour).
        components: which encoders to edit (e.g. ``["text_encoder_2"]`` on SDXL); default all.
    """
    handle = model if isinstance(model, ModelHandle) else load_model(model, device=device)
    spec = get_method(method)
    config = spec.config_cls() if config is None else config
    return spec.erase(handle, _concepts(concepts, kind), config, components=components, progress=progress)


def _as_patches(patches: PatchLike | Sequence[PatchLike]) -> list[Patch]:
    items = [patches] if isinstance(patches, (Patch, str, os.PathLike)) else list(patches)
    return [p if isinstance(p, Patch) else Patch.load(p) for p in items]


def apply_patch(
    target: Any, patches: PatchLike | Sequence[PatchLike], *, component: str | None = None
) -> Any:
    """Apply patch(es) in place to a diffusers pipeline or a single module and return it.

    Several patches compose (see :mod:`hirm.core.patch`); a patch made for other weights is refused.
    """
    return apply_patches(target, _as_patches(patches), component=component)


def load_pipeline(
    model: str | os.PathLike = EMBEDDED,
    *,
    patches: PatchLike | Sequence[PatchLike] = (),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load a diffusers pipeline (``from_pretrained``) and apply ``patches`` to it."""
    pipe = load_model(model, device=device, dtype=dtype).pipeline()
    loaded = _as_patches(patches)
    return apply_patches(pipe, loaded) if loaded else pipe


def save_patched(
    model: str | os.PathLike,
    patches: PatchLike | Sequence[PatchLike],
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the patched model to ``out_dir`` with ``save_pretrained`` (atomically, never clobbering).

    A pipeline is written whole; a bare text encoder is written with its tokenizer.
    """
    handle = load_model(model)
    loaded = _as_patches(patches)
    with atomic_path(out_dir, overwrite=overwrite, directory=True) as tmp:
        if handle.is_pipeline:
            pipe = apply_patches(handle.pipeline(), loaded)
            pipe.save_pretrained(str(tmp))
        else:
            name = handle.family.encoders[0]
            encoder = apply_patches(handle.text_encoder(name), loaded, component=name)
            encoder.save_pretrained(str(tmp))
            handle.tokenizer(name).save_pretrained(str(tmp))
    return Path(out_dir)


def save_encoders(
    model: str | os.PathLike | ModelHandle,
    patch: PatchLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write each edited text encoder (and its tokenizer) as a drop-in ``save_pretrained`` folder
    ``out_dir/<component>`` (e.g. ``text_encoder``, ``text_encoder_2``), in float32."""
    handle = model if isinstance(model, ModelHandle) else load_model(model)
    (loaded,) = _as_patches(patch)
    with atomic_path(out_dir, overwrite=overwrite, directory=True) as tmp:
        for name in loaded.components:
            encoder = handle.text_encoder(name)
            saved = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
            try:
                apply_patches(encoder, [loaded], component=name)
                encoder.save_pretrained(str(tmp / name))
                handle.tokenizer(name).save_pretrained(str(tmp / handle.family.tokenizer_for(name)))
            finally:
                encoder.load_state_dict(saved)
    return Path(out_dir)
