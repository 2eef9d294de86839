"""Patches: only the tensors an erasure method changed, plus what they are.

A patch is one safetensors file. Tensor keys are ``"{component}/{canonical parameter name}"``, e.g.
``text_encoder/encoder.layers.0.self_attn.q_proj.weight`` or ``unet/down_blocks.0...to_k.weight``;
values are the edited weights in float32. The safetensors metadata holds one JSON document under
``"hirm"``: method, config, concepts, base model (source, family, fingerprint), package version,
final loss and creation date.

Base fingerprint, one per component: SHA-256 over the sorted keys, shapes and the original values
rounded to float16 (so a patch made on float32 weights also applies to the same model loaded in
float16). Values that differ only below float16 precision are not told apart.

Composition rule: :func:`apply_patches` checks every patch against the *unpatched* base and sets each
tensor to ``base + sum_i (patch_i - base)`` over the patches that touch it. Patches on disjoint
tensors (e.g. a HiRM text-encoder patch and a UCE U-Net patch) therefore compose exactly and in any
order; patches on the same tensors add their deltas (task arithmetic). Applying a patch to a model
that another patch already changed is refused by the fingerprint check: give all patches in one call.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from hirm._version import __version__
from hirm.core.encoder import canonical_name
from hirm.io import write_atomic

FORMAT = "hirm-patch/1"


class PatchMismatchError(ValueError):
    """The patch was made for different base weights, or names tensors the model does not have."""


def fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of keys, shapes and float16-rounded values (see module docstring)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu", torch.float16).contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Patch:
    """Changed tensors (``component/name`` -> new value, float32 on CPU) and their metadata."""

    tensors: dict[str, Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(sorted({key.split("/", 1)[0] for key in self.tensors}))

    @property
    def fingerprints(self) -> dict[str, str]:
        """Base fingerprint per component."""
        return self.metadata["base"]["fingerprints"]

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write atomically; an existing file is only replaced with ``overwrite=True``."""
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.tensors.items()}
        meta = {"format": FORMAT, "hirm": json.dumps(self.metadata, sort_keys=True)}
        return write_atomic(
            path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), overwrite=overwrite
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Patch:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No patch file at {path}.")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path} is not a readable safetensors patch: {err}") from err
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a hirm patch (format {meta.get('format')!r}, expected {FORMAT})."
            )
        return cls(tensors=tensors, metadata=json.loads(meta["hirm"]))


def make_patch(
    *,
    method: str,
    originals: Mapping[str, Tensor],
    edited: Mapping[str, Tensor],
    config: Mapping[str, Any],
    concepts: list[dict[str, Any]],
    base: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Patch:
    """Build a patch from the original and edited values of the same keys."""
    if set(originals) != set(edited):
        raise ValueError("originals and edited must have the same keys.")
    metadata = {
        "method": method,
        "config": dict(config),
        "concepts": concepts,
        "base": {
            **dict(base),
            "fingerprints": _fingerprints(originals),
            "num_tensors": len(originals),
        },
        "hirm_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(extra or {}),
    }
    tensors = {k: v.detach().to("cpu", torch.float32).clone() for k, v in edited.items()}
    return Patch(tensors=tensors, metadata=metadata)


def _fingerprints(tensors: Mapping[str, Tensor]) -> dict[str, str]:
    by_component: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        by_component.setdefault(key.split("/", 1)[0], {})[key] = value
    return {comp: fingerprint(values) for comp, values in sorted(by_component.items())}


def merge_patches(patches: Sequence[Patch]) -> Patch:
    """One patch from several that change disjoint tensors (e.g. SDXL's two encoders, or HiRM + UCE).

    Per-component fingerprints, losses and final losses are merged; if the methods differ the result's
    method is their names joined by ``+`` and each part's metadata is kept under ``parts``.
    """
    if not patches:
        raise ValueError("Nothing to merge.")
    tensors: dict[str, Tensor] = {}
    for patch in patches:
        overlap = set(tensors) & set(patch.tensors)
        if overlap:
            raise ValueError(f"Patches overlap on {sorted(overlap)[:3]}; use apply_patches to compose them.")
        tensors.update(patch.tensors)
    metadata = json.loads(json.dumps(patches[0].metadata))
    metadata["base"]["fingerprints"] = {c: f for p in patches for c, f in p.fingerprints.items()}
    metadata["base"]["num_tensors"] = len(tensors)
    for key in ("final_loss", "losses"):
        merged = {c: v for p in patches for c, v in p.metadata.get(key, {}).items()}
        if merged:
            metadata[key] = merged
    methods = [p.metadata["method"] for p in patches]
    if len(set(methods)) > 1:
        metadata["method"] = "+".join(dict.fromkeys(methods))
        metadata["parts"] = [p.metadata for p in patches]
    return Patch(tensors=tensors, metadata=metadata)


def component_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {canonical_name(n): p for n, p in module.named_parameters()}


def _components(target: Any, patches: list[Patch], component: str | None) -> dict[str, nn.Module]:
    """Map component names used by the patches to the modules of ``target``."""
    needed = sorted({c for p in patches for c in p.components})
    if isinstance(target, nn.Module):
        if component is None:
            if len(needed) != 1:
                raise PatchMismatchError(
                    f"The patches change {needed}; applying them to a single module needs component=..."
                )
            component = needed[0]
        if len(needed) > 1:
            raise PatchMismatchError(
                f"The patches change {needed}; a single module can only take one of them."
            )
        return {needed[0]: target} if needed[0] == component else {}
    modules = {}
    for name in needed:
        module = getattr(target, name, None)
        if not isinstance(module, nn.Module):
            raise PatchMismatchError(
                f"The patch changes component {name!r}, which {type(target).__name__} does not have."
            )
        modules[name] = module
    return modules


@torch.no_grad()
def apply_patches(target: Any, patches: Patch | Iterable[Patch], *, component: str | None = None) -> Any:
    """Apply one or several patches to a pipeline or a module, in place; returns ``target``.

    Every patch is checked against the current (base) weights before anything changes, so a
    mismatch leaves the model untouched. See the module docstring for the composition rule.
    """
    patches = [patches] if isinstance(patches, Patch) else list(patches)
    modules = _components(target, patches, component)
    if not modules:
        raise PatchMismatchError(f"None of the patches changes component {component!r}.")
    params = {name: component_parameters(module) for name, module in modules.items()}

    base: dict[str, Tensor] = {}
    for i, patch in enumerate(patches):
        originals: dict[str, Tensor] = {}
        for key, value in patch.tensors.items():
            comp, name = key.split("/", 1)
            if name not in params[comp]:
                raise PatchMismatchError(f"Patch {i} changes {key}, which the model does not have.")
            param = params[comp][name]
            if tuple(param.shape) != tuple(value.shape):
                raise PatchMismatchError(
                    f"Patch {i}: {key} has shape {tuple(value.shape)}, the model's is {tuple(param.shape)}."
                )
            originals[key] = param
        if _fingerprints(originals) != patch.fingerprints:
            made_on = patch.metadata.get("base", {}).get("source", "another model")
            raise PatchMismatchError(
                f"Patch {i} ({patch.metadata.get('method')}, concepts "
                f"{[c['text'] for c in patch.metadata.get('concepts', [])]}) was made for different base "
                f"weights ({made_on}). Apply it to the original, unpatched model; to combine several "
                "patches pass them together in one call."
            )
        for key, param in originals.items():
            base.setdefault(key, param.detach().to(torch.float32).clone())

    for key, original in base.items():
        comp, name = key.split("/", 1)
        edits = [patch.tensors[key].to(original.device) for patch in patches if key in patch.tensors]
        # One edit is copied as is (bit-exact); several add their deltas to the base.
        new = edits[0] if len(edits) == 1 else original + sum(edit - original for edit in edits)
        param = params[comp][name]
        param.copy_(new.to(param.dtype))
    return target
