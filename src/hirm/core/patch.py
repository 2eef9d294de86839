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
tensor to ``base + scale * sum_i (patch_i - base)`` over the patches that touch it. Patches on disjoint
tensors (e.g. a HiRM text-encoder patch and a UCE U-Net patch) therefore compose exactly and in any
order. Separately trained patches on the *same* tensors are refused by default: summing their deltas
(task arithmetic) damages what each should keep (measured on MiniCanvas: five HiRM-S object patches
summed kept 60 % CRA, the same five trained jointly 95 %); train them jointly (``hirm erase -c A -c B``)
or opt in with ``allow_overlap=True``. The same patch given twice is always refused. Applying a patch to
a model that already carries one is refused: give all patches in one call, or :func:`remove_patch` first.
:func:`remove_patch` restores the exact original values (kept aside, on the CPU, when applying).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
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


class PatchConflictError(ValueError):
    """Patches that cannot be applied together: the same patch twice, or overlapping tensors."""


#: Attribute of a patched module holding what :func:`remove_patch` needs (original values, digests).
_APPLIED = "_hirm_applied"


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

    @property
    def digest(self) -> str:
        """SHA-256 of the tensors (names, shapes, float32 bytes): identifies the edited weights."""
        digest = hashlib.sha256()
        for key in sorted(self.tensors):
            value = self.tensors[key].detach().to("cpu", torch.float32).contiguous()
            digest.update(key.encode())
            digest.update(str(tuple(value.shape)).encode())
            digest.update(value.numpy().tobytes())
        return digest.hexdigest()

    def state_dict(self, component: str, module: nn.Module | None = None) -> dict[str, Tensor]:
        """The tensors of one ``component`` keyed without the ``component/`` prefix.

        Keys are canonical names (``encoder.layers.0...``); pass ``module`` to get that module's own
        names (e.g. ``text_model.encoder.layers.0...`` on ``CLIPTextModelWithProjection``), ready for
        ``module.load_state_dict(patch.state_dict(c, module), strict=False)``. A name the module lacks is
        an error (``strict=False`` would silently skip it).
        """
        prefix = f"{component}/"
        tensors = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        if not tensors:
            raise KeyError(f"This patch changes {list(self.components)}, not {component!r}.")
        if module is None:
            return tensors
        own = {canonical_name(n): n for n, _ in module.named_parameters()}
        missing = sorted(set(tensors) - set(own))
        if missing:
            raise PatchMismatchError(
                f"{type(module).__name__} has no parameters {missing[:3]}; is it the {component!r} component?"
            )
        return {own[name]: value for name, value in tensors.items()}

    def __repr__(self) -> str:
        meta = self.metadata
        concepts = [c.get("text") for c in meta.get("concepts", []) if isinstance(c, dict)]
        base = meta.get("base", {}) if isinstance(meta.get("base"), dict) else {}
        return (
            f"Patch({meta.get('method', '?')}, concepts={concepts}, {len(self.tensors)} tensors / "
            f"{self.num_parameters:,} parameters in {list(self.components)}, base={base.get('family', '?')})"
        )

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
        try:
            metadata = json.loads(meta.get("hirm", ""))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: the patch metadata is not valid JSON ({err.msg}); the file is damaged."
            ) from None
        _check_metadata(path, tensors, metadata)
        return cls(tensors=tensors, metadata=metadata)


def _check_metadata(path: Path, tensors: Mapping[str, Tensor], metadata: Any) -> None:
    """What :func:`apply_patches` relies on: ``component/name`` keys and a fingerprint per component."""
    damaged = f"{path} is a damaged hirm patch:"
    if not isinstance(metadata, dict) or not isinstance(metadata.get("method"), str):
        raise ValueError(f"{damaged} its metadata names no method.")
    bad_keys = [key for key in tensors if "/" not in key]
    if bad_keys or not tensors:
        raise ValueError(f"{damaged} tensor keys must be 'component/name', got {bad_keys[:3] or 'none'}.")
    fingerprints = (
        (metadata.get("base") or {}).get("fingerprints") if isinstance(metadata.get("base"), dict) else None
    )
    components = {key.split("/", 1)[0] for key in tensors}
    if not isinstance(fingerprints, dict) or not components <= set(fingerprints):
        raise ValueError(f"{damaged} its metadata lacks the base fingerprints of {sorted(components)}.")


def relative_change(original: Tensor, edited: Tensor) -> float | None:
    """``||edited - original||_F / ||original||_F`` in float64; ``None`` when the original is all zeros."""
    o, e = original.detach().double().cpu(), edited.detach().double().cpu()
    norm = float(o.norm())
    return float((e - o).norm()) / norm if norm > 0 else None


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
            "fingerprints": component_fingerprints(originals),
            "num_tensors": len(originals),
        },
        # how big the edit is, per tensor: what ``hirm info`` shows (a closed form can rewrite a weight)
        "relative_change": {k: relative_change(originals[k], edited[k]) for k in sorted(originals)},
        "hirm_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(extra or {}),
    }
    tensors = {k: v.detach().to("cpu", torch.float32).clone() for k, v in edited.items()}
    return Patch(tensors=tensors, metadata=metadata)


def component_fingerprints(tensors: Mapping[str, Tensor]) -> dict[str, str]:
    """The base fingerprint per component of ``component/name`` tensors, as a patch records it."""
    by_component: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        by_component.setdefault(key.split("/", 1)[0], {})[key] = value
    return {comp: fingerprint(values) for comp, values in sorted(by_component.items())}


def shared_keys(patches: Sequence[Patch]) -> list[str]:
    """The keys of every tensor the patches change in a component that more than one of them changes:
    the originals :func:`merge_patches` needs as ``base``."""
    counts: dict[str, int] = {}
    for patch in patches:
        for component in patch.components:
            counts[component] = counts.get(component, 0) + 1
    return sorted(k for p in patches for k in p.tensors if counts[k.split("/", 1)[0]] > 1)


def merge_patches(patches: Sequence[Patch], *, base: Mapping[str, Tensor] | None = None) -> Patch:
    """One patch from several that change disjoint tensors (e.g. SDXL's two encoders, or HiRM + UCE).

    Per-component fingerprints, losses and final losses are merged (a component several parts change
    keeps each part's, keyed ``"<component> (part <i>: <method>)"``); if the methods differ the result's
    method is their names joined by ``+`` and each part's metadata is kept under ``parts``.

    A component's fingerprint covers the original values of every tensor the patch changes in it, so
    when several patches change different tensors of one component (e.g. KV-Proj's cross-attention keys
    and ESD-u's other U-Net weights) the merged fingerprint needs those originals: ``base`` maps the
    :func:`shared_keys` to the model's original values (:func:`hirm.core.multi.base_tensors`); each
    part's fingerprint is checked against it first.
    """
    if not patches:
        raise ValueError("Nothing to merge.")
    tensors: dict[str, Tensor] = {}
    for patch in patches:
        overlap = set(tensors) & set(patch.tensors)
        if overlap:
            raise ValueError(f"Patches overlap on {sorted(overlap)[:3]}; use apply_patches to compose them.")
        tensors.update(patch.tensors)
    fingerprints = {c: f for p in patches for c, f in p.fingerprints.items()}
    shared = shared_keys(patches)
    shared_components = {k.split("/", 1)[0] for k in shared}
    for component in sorted(shared_components):
        parts = [i for i, p in enumerate(patches) if component in p.components]
        keys = [k for k in shared if k.split("/", 1)[0] == component]
        if base is None or not set(keys) <= set(base):
            raise ValueError(
                f"Patches {parts} all change component {component!r}; merging them needs the model's original "
                "values of those tensors: pass base=hirm.core.multi.base_tensors(model, shared_keys(patches)), "
                "or apply the patches together with apply_patch([...])."
            )
        for i in parts:
            own = {k: base[k] for k in patches[i].tensors if k.split("/", 1)[0] == component}
            if component_fingerprints(own)[component] != patches[i].fingerprints[component]:
                raise ValueError(
                    f"Patch {i} was made for other {component!r} weights than the base given to merge_patches."
                )
        fingerprints[component] = component_fingerprints({k: base[k] for k in keys})[component]
    metadata = json.loads(json.dumps(patches[0].metadata))
    metadata["base"]["fingerprints"] = fingerprints
    metadata["base"]["num_tensors"] = len(tensors)
    # relative_change is per tensor (disjoint); losses are per component, so where several parts change
    # one component each keeps its own, named by the part: "unet (part 3: esd-u)"
    for key in ("final_loss", "losses", "relative_change"):
        merged = {
            (f"{c} (part {i + 1}: {p.metadata.get('method')})" if c in shared_components else c): v
            for i, p in enumerate(patches)
            for c, v in p.metadata.get(key, {}).items()
        }
        if merged:
            metadata[key] = merged
    methods = [p.metadata["method"] for p in patches]
    if len(set(methods)) > 1:
        metadata["method"] = "+".join(dict.fromkeys(methods))
        metadata["parts"] = [p.metadata for p in patches]
    return Patch(tensors=tensors, metadata=metadata)


def split_patch(patch: Patch) -> list[Patch]:
    """The parts a :func:`merge_patches` of different methods was made from, each as it was made: its
    tensors (the keys its own ``relative_change`` names) and its own metadata and base fingerprints, so
    each applies alone, e.g. to measure what each part of HiRM + KV-Proj + ESD-u costs."""
    parts = patch.metadata.get("parts")
    if not parts:
        raise ValueError(
            "This patch is not a merge of different methods (its metadata has no 'parts'); nothing to split."
        )
    out: list[Patch] = []
    seen: set[str] = set()
    for i, metadata in enumerate(parts):
        keys = set((metadata.get("relative_change") or {}) if isinstance(metadata, dict) else ())
        if not keys or not keys <= set(patch.tensors) or keys & seen:
            raise ValueError(
                f"Part {i} of this merged patch does not name its own tensors; it cannot be split."
            )
        seen |= keys
        out.append(Patch({k: patch.tensors[k] for k in sorted(keys)}, json.loads(json.dumps(metadata))))
    if seen != set(patch.tensors):
        raise ValueError(
            "The parts of this merged patch do not account for all its tensors; it cannot be split."
        )
    return out


def component_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {canonical_name(n): p for n, p in module.named_parameters()}


def _components(target: Any, patches: list[Patch], component: str | None) -> dict[str, nn.Module]:
    """Map component names used by the patches to the modules of ``target``.

    A single module takes one component: ``component`` names it (the patches' other components are
    ignored), or the patches must change exactly one.
    """
    needed = sorted({c for p in patches for c in p.components})
    if isinstance(target, nn.Module):
        if component is None:
            if len(needed) != 1:
                raise PatchMismatchError(
                    f"The patches change {needed}; applying them to a single module needs component=..."
                )
            component = needed[0]
        if component not in needed:
            raise PatchMismatchError(
                f"None of the patches changes component {component!r}; they change {needed}."
            )
        return {component: target}
    modules = {}
    for name in needed if component is None else [component]:
        module = getattr(target, name, None)
        if not isinstance(module, nn.Module):
            made = {str(p.metadata.get("base", {}).get("family")) for p in patches if name in p.components}
            raise PatchMismatchError(
                f"The patch changes component {name!r} (it was made on a {'/'.join(sorted(made))} model), "
                f"which {type(target).__name__} does not have."
            )
        modules[name] = module
    return modules


def check_composable(patches: Sequence[Patch], *, allow_overlap: bool = False) -> None:
    """Refuse the same patch twice (always) and patches changing the same tensors (unless allowed)."""
    seen: dict[str, int] = {}
    for i, patch in enumerate(patches):
        digest = patch.digest
        if digest in seen:
            raise PatchConflictError(
                f"Patch {i} is the same as patch {seen[digest]} ({patch!r}); applying it twice would double "
                "its edit. Give each patch once."
            )
        seen[digest] = i
    if allow_overlap:
        return
    owners: dict[str, int] = {}
    for i, patch in enumerate(patches):
        for key in patch.tensors:
            if key in owners:
                concepts = [
                    [c.get("text") for c in patches[j].metadata.get("concepts", [])] for j in (owners[key], i)
                ]
                raise PatchConflictError(
                    f"Patches {owners[key]} {concepts[0]} and {i} {concepts[1]} both change {key}: summing "
                    "separately trained edits of the same tensors damages what each should keep. Erase the "
                    "concepts jointly instead (hirm erase -c A -c B), or accept the sum of their deltas with "
                    "allow_overlap=True (--allow-overlap)."
                )
            owners[key] = i


def _check_finite(patches: Sequence[Patch]) -> None:
    for i, patch in enumerate(patches):
        bad = [k for k, v in patch.tensors.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise PatchMismatchError(
                f"Patch {i} ({patch!r}) holds NaN or infinite values in {bad[:3]}; it would break the model. "
                "Nothing was applied."
            )


@torch.no_grad()
def apply_patches(
    target: Any,
    patches: Patch | Iterable[Patch],
    *,
    component: str | None = None,
    scale: float = 1.0,
    allow_overlap: bool = False,
    keep_originals: bool = True,
) -> Any:
    """Apply one or several patches to a pipeline or a module, in place; returns ``target``.

    Every patch is checked (finite values, no duplicate, no overlap unless ``allow_overlap``, fingerprint
    of the current base weights) before anything changes, so a refusal leaves the model untouched.
    ``scale`` sets each tensor to ``base + scale * delta`` (like a LoRA scale; 1 = the patch as trained,
    copied bit for bit). ``component`` restricts the patches to one component (needed for a single
    module when they change several). The original values of the changed tensors are kept on the CPU,
    in their dtype, for :func:`remove_patch` (``keep_originals=False`` saves that memory and makes the
    patch permanent). See the module docstring for the composition rule.
    """
    patches = [patches] if isinstance(patches, Patch) else list(patches)
    if not patches:
        raise ValueError("No patch to apply.")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number, got {scale!r}.")
    modules = _components(target, patches, component)
    check_composable(patches, allow_overlap=allow_overlap)
    _check_finite(patches)
    for name, module in modules.items():
        if getattr(module, _APPLIED, None):
            raise PatchMismatchError(
                f"Component {name!r} already carries a hirm patch; call hirm.remove_patch first, or give all "
                "patches in one call."
            )
    params = {name: component_parameters(module) for name, module in modules.items()}
    base = _checked_base(patches, params)

    kept: dict[str, dict[str, Tensor]] = {name: {} for name in modules}
    for key, original in base.items():
        comp, name = key.split("/", 1)
        param = params[comp][name]
        edits = [patch.tensors[key].to(original.device) for patch in patches if key in patch.tensors]
        if len(edits) == 1 and scale == 1:
            new = edits[0]  # one edit at full strength is copied as is (bit-exact)
        else:
            new = original + scale * sum(edit - original for edit in edits)
        if keep_originals:
            kept[comp][name] = param.detach().to("cpu", copy=True)
        param.copy_(new.to(param.dtype))
    for name, module in modules.items():
        record = {"originals": kept[name] if keep_originals else None, "patches": [p.digest for p in patches]}
        setattr(module, _APPLIED, record)
    return target


def _checked_base(
    patches: Sequence[Patch], params: Mapping[str, Mapping[str, nn.Parameter]]
) -> dict[str, Tensor]:
    """The current (base) values, float32, of every tensor the patches change in ``params``'s
    components, after checking names, shapes and each patch's base fingerprint."""
    base: dict[str, Tensor] = {}
    for i, patch in enumerate(patches):
        originals: dict[str, Tensor] = {}
        for key, value in patch.tensors.items():
            comp, name = key.split("/", 1)
            if comp not in params:
                continue
            if name not in params[comp]:
                raise PatchMismatchError(f"Patch {i} changes {key}, which the model does not have.")
            param = params[comp][name]
            if tuple(param.shape) != tuple(value.shape):
                raise PatchMismatchError(
                    f"Patch {i}: {key} has shape {tuple(value.shape)}, the model's is {tuple(param.shape)}."
                )
            originals[key] = param
        if component_fingerprints(originals) != {c: f for c, f in patch.fingerprints.items() if c in params}:
            made_on = patch.metadata.get("base", {}).get("source", "another model")
            raise PatchMismatchError(
                f"Patch {i} ({patch.metadata.get('method')}, concepts "
                f"{[c.get('text') for c in patch.metadata.get('concepts', [])]}) was made for different base "
                f"weights ({made_on}). Apply it to the original, unpatched model; to combine several "
                "patches pass them together in one call."
            )
        for key, param in originals.items():
            base.setdefault(key, param.detach().to(torch.float32).clone())
    return base


@torch.no_grad()
def remove_patch(target: Any, *, component: str | None = None) -> Any:
    """Undo :func:`apply_patches` on ``target`` (a pipeline or a module): the exact original values of
    every changed tensor are written back. ``component`` restricts it to one pipeline component."""
    if isinstance(target, nn.Module):
        modules = {"module": target}
    elif component is not None:
        modules = {component: getattr(target, component, None)}
    else:  # a diffusers pipeline lists its parts in .components
        modules = dict(getattr(target, "components", None) or vars(target))
    patched = {n: m for n, m in modules.items() if isinstance(m, nn.Module) and getattr(m, _APPLIED, None)}
    if not patched:
        raise PatchMismatchError(
            f"No hirm patch is applied to this {type(target).__name__}; nothing to remove."
        )
    for name, module in patched.items():
        originals = getattr(module, _APPLIED)["originals"]
        if originals is None:
            raise PatchMismatchError(f"{name!r} was patched with keep_originals=False; it cannot be undone.")
    for module in patched.values():
        params = component_parameters(module)
        for name, value in getattr(module, _APPLIED)["originals"].items():
            params[name].copy_(value)
        setattr(module, _APPLIED, None)
    return target


def applied_patches(module: nn.Module) -> list[str]:
    """Digests of the patches currently applied to ``module`` (empty when none)."""
    record = getattr(module, _APPLIED, None)
    return list(record["patches"]) if record else []
