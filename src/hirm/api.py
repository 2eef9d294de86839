"""The Python API: load -> erase -> save patch -> apply -> generate.

>>> import hirm
>>> patch = hirm.erase("minicanvas", ["Cats"])                  # HiRM-R, reference defaults
>>> patch.save("cats.safetensors")
>>> pipe = hirm.load_pipeline("minicanvas", patches=["cats.safetensors"])
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from hirm.adapters.loading import EMBEDDED, ModelHandle, load_model, stored_dtypes
from hirm.core.config import Concept, ConceptKind, PromptTarget, RandomTarget
from hirm.core.encoder import canonical_name
from hirm.core.patch import Patch, applied_patches, apply_patches, check_composable, remove_patch
from hirm.core.registry import get_method
from hirm.io import atomic_path, check_writable

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
    target: Any,
    patches: PatchLike | Sequence[PatchLike],
    *,
    component: str | None = None,
    scale: float = 1.0,
    allow_overlap: bool = False,
) -> Any:
    """Apply patch(es) in place to a diffusers pipeline or a single module and return it.

    ``scale``: each changed tensor becomes ``base + scale * delta`` (1 = as trained). Several patches
    compose when they change different tensors; overlapping ones need ``allow_overlap=True`` (their
    deltas add up), the same patch twice and a patch made for other weights are refused. Undo with
    :func:`remove_patch`. See :mod:`hirm.core.patch`.
    """
    loaded = _as_patches(patches)
    return apply_patches(target, loaded, component=component, scale=scale, allow_overlap=allow_overlap)


def load_pipeline(
    model: str | os.PathLike = EMBEDDED,
    *,
    patches: PatchLike | Sequence[PatchLike] = (),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    allow_overlap: bool = False,
):
    """Load a diffusers pipeline (``from_pretrained``, every component in ``dtype``) and apply ``patches``."""
    loaded = _as_patches(patches)
    pipe = load_model(model, device=device, dtype=dtype).pipeline()
    return apply_patches(pipe, loaded, scale=scale, allow_overlap=allow_overlap) if loaded else pipe


def save_patched(
    model: str | os.PathLike,
    patches: PatchLike | Sequence[PatchLike],
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    scale: float = 1.0,
    allow_overlap: bool = False,
) -> Path:
    """Write the patched model to ``out_dir`` (atomically, never clobbering), loadable with ``from_pretrained``.

    Only the components the patches change are loaded, patched and re-saved (``save_pretrained``), each
    tensor in the dtype it has on disk (an fp16 checkpoint stays fp16); every other component folder
    listed in ``model_index.json`` is copied byte for byte. A bare text encoder is written with its
    tokenizer. Everything is loaded and checked before the output directory is created.
    """
    handle = load_model(model)
    loaded = _as_patches(patches)
    check_composable(loaded, allow_overlap=allow_overlap)
    check_writable(out_dir, overwrite=overwrite, directory=True)
    options = {"scale": scale, "allow_overlap": allow_overlap, "keep_originals": False}
    if handle.is_pipeline:
        names = sorted({c for p in loaded for c in p.components})
        modules = {name: handle.component(name) for name in names}
        apply_patches(SimpleNamespace(**modules), loaded, **options)
    else:
        name = handle.family.encoders[0]
        modules = {name: apply_patches(handle.text_encoder(name), loaded, component=name, **options)}
    with atomic_path(out_dir, overwrite=overwrite, directory=True, kind="apply") as tmp:
        if handle.is_pipeline:
            shutil.copy2(handle.path / "model_index.json", tmp / "model_index.json")
            for entry in sorted(handle.index):
                source = handle.path / entry
                if entry.startswith("_") or entry in modules or not source.is_dir():
                    continue
                shutil.copytree(source, tmp / entry)
            for name, module in modules.items():
                save_in_stored_dtypes(module, handle.folder(name), tmp / name)
        else:
            save_in_stored_dtypes(modules[name], handle.folder(name), tmp)
            handle.tokenizer(name).save_pretrained(str(tmp))
    return Path(out_dir)


def save_in_stored_dtypes(module: nn.Module, source: Path, destination: Path) -> None:
    """``module.save_pretrained(destination)`` with every tensor in its dtype in ``source``'s weights
    (the module itself is left in its current dtypes)."""
    stored = stored_dtypes(source)
    canonical = {canonical_name(k): v for k, v in stored.items()}
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    current = {name: t.dtype for name, t in tensors.items()}
    try:
        for name, tensor in tensors.items():
            dtype = stored.get(name) or canonical.get(canonical_name(name))
            if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)
        module.save_pretrained(str(destination))
    finally:
        for name, tensor in tensors.items():
            if tensor.dtype != current[name]:
                tensor.data = tensor.data.to(current[name])


def save_encoders(
    model: str | os.PathLike | ModelHandle,
    patch: PatchLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write each edited text encoder as a drop-in ``save_pretrained`` folder ``out_dir/<component>``
    (e.g. ``text_encoder``, ``text_encoder_2``) with its tokenizer (``out_dir/<tokenizer component>``),
    each tensor in its dtype on disk. Works on SDXL and SD3 (two encoders); ``model``'s own modules are
    left unchanged."""
    handle = model if isinstance(model, ModelHandle) else load_model(model)
    (loaded,) = _as_patches(patch)
    check_encoder_patch(handle, loaded)
    check_writable(out_dir, overwrite=overwrite, directory=True)
    encoders = {name: handle.text_encoder(name) for name in loaded.components}
    try:
        for name, encoder in encoders.items():
            apply_patches(encoder, [loaded], component=name)
        with atomic_path(out_dir, overwrite=overwrite, directory=True, kind="save-encoder") as tmp:
            for name, encoder in encoders.items():
                save_in_stored_dtypes(encoder, handle.folder(name), tmp / name)
                handle.tokenizer(name).save_pretrained(str(tmp / handle.family.tokenizer_for(name)))
    finally:
        for encoder in encoders.values():
            if applied_patches(encoder):
                remove_patch(encoder)
    return Path(out_dir)


def check_encoder_patch(handle: ModelHandle, patch: Patch) -> None:
    """Refuse a patch that changes anything but ``handle``'s CLIP text encoders (for ``--save-encoder``)."""
    others = [c for c in patch.components if c not in handle.family.encoders]
    if others:
        raise ValueError(
            f"--save-encoder writes text encoders; this patch also changes {others}. Use `hirm apply` to "
            "write the whole patched model."
        )
