"""Erased models where people use them (``hirm export``).

* :func:`export_encoders` — each edited text encoder as a diffusers / transformers ``save_pretrained``
  folder (:func:`hirm.api.save_encoders`).
* :func:`export_single_file` — a patched copy of an original single-file checkpoint (``.safetensors``,
  the layout AUTOMATIC1111 / Forge / ComfyUI load): the patch's text-encoder tensors are written into
  the original (LDM / SGM) key layout, in the file's own dtype; everything else is copied byte for byte.
  The input is never modified.
* :func:`write_model_card` — a ``README.md`` with YAML metadata (base model, method, erased concepts,
  metrics with n and 95 % intervals when an evaluation is given) and a labelled image grid, ready for
  ``huggingface-cli upload``.

Single-file layouts (what diffusers' ``from_single_file`` reads back, see
``diffusers.loaders.single_file_utils``)::

    SD 1.x         text_encoder    cond_stage_model.transformer.text_model.*             (CLIP, HF names)
    SD 2.x         text_encoder    cond_stage_model.model.*                              (OpenCLIP, fused in_proj)
    SDXL base      text_encoder    conditioner.embedders.0.transformer.text_model.*      (CLIP-L, HF names)
                   text_encoder_2  conditioner.embedders.1.model.*                       (OpenCLIP bigG)
    SDXL refiner   text_encoder_2  conditioner.embedders.0.model.*                       (OpenCLIP bigG)
    SD3            text_encoder    text_encoders.clip_l.transformer.text_model.*         (CLIP-L)
                   text_encoder_2  text_encoders.clip_g.transformer.text_model.*         (CLIP-G, HF names)
    a CLIP file    text_encoder    text_model.*                                          (e.g. ComfyUI clip_l)

OpenCLIP blocks fuse q, k, v into ``attn.in_proj_weight`` (3D, D) / ``in_proj_bias`` (3D,) in that order;
``text_projection`` is stored transposed. U-Net patches (UCE, ESD) are not translated: use ``hirm apply``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch

from hirm._version import __version__
from hirm.core.patch import Patch, PatchMismatchError, fingerprint
from hirm.evaluation.describe import erasure_facts, method_name, metric_definitions
from hirm.evaluation.report_html import Share, facts_md
from hirm.io import write_atomic

#: safetensors dtype names -> torch dtypes (the float types a checkpoint's text encoder can have).
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}

_OPEN_CLIP_BLOCK = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


class ExportError(ValueError):
    """The checkpoint or the patch cannot be exported as asked; the message says what to do."""


@dataclass(frozen=True)
class Slot:
    """Where one canonical encoder tensor lives in a single file.

    ``part``: index of q/k/v in a fused ``in_proj`` (rows ``part * D`` to ``(part + 1) * D``);
    ``transpose``: stored transposed (OpenCLIP's ``text_projection``).
    """

    key: str
    part: int | None = None
    transpose: bool = False


@dataclass(frozen=True)
class Layout:
    """A text encoder's key layout in a single-file checkpoint: ``clip`` (HF names under ``prefix``) or
    ``open_clip`` (OpenCLIP names under ``prefix``)."""

    kind: Literal["clip", "open_clip"]
    prefix: str

    def slot(self, name: str) -> Slot:
        """The slot of a canonical parameter name (``encoder.layers.0.self_attn.q_proj.weight``)."""
        if self.kind == "clip":
            if name.startswith("text_projection."):
                return Slot(self.prefix.removesuffix("text_model.") + name)
            return Slot(self.prefix + name)
        if name in _OPEN_CLIP_TOP:
            return Slot(self.prefix + _OPEN_CLIP_TOP[name])
        if name == "text_projection.weight":
            return Slot(self.prefix + "text_projection", transpose=True)
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", name)
        if match:
            block, rest = f"{self.prefix}transformer.resblocks.{match[1]}.", match[2]
            qkv = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if qkv:
                return Slot(block + f"attn.in_proj_{qkv[2]}", part="qkv".index(qkv[1]))
            for ours, theirs in _OPEN_CLIP_BLOCK.items():
                if rest.startswith(ours):
                    return Slot(block + theirs + rest[len(ours) :])
        raise ExportError(f"No OpenCLIP single-file name for the encoder tensor {name!r}.")


def _clip(prefix: str) -> Layout:
    return Layout("clip", prefix)


def _open_clip(prefix: str) -> Layout:
    return Layout("open_clip", prefix)


#: Candidate layouts per patch component, tried in order; the one whose keys the file has is used.
LAYOUTS: dict[str, tuple[Layout, ...]] = {
    "text_encoder": (
        _clip("cond_stage_model.transformer.text_model."),
        _open_clip("cond_stage_model.model."),
        _clip("conditioner.embedders.0.transformer.text_model."),
        _clip("text_encoders.clip_l.transformer.text_model."),
        _clip("text_model."),
    ),
    "text_encoder_2": (
        _open_clip("conditioner.embedders.1.model."),
        _open_clip("conditioner.embedders.0.model."),
        _clip("text_encoders.clip_g.transformer.text_model."),
    ),
}
_PROBE = "encoder.layers.0.self_attn.out_proj.weight"


# ------------------------------------------------------------------------------------ safetensors


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data starts."""
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ExportError(f"{path} is not a safetensors file (too short).")
        size = int.from_bytes(raw, "little")
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError, MemoryError, OverflowError) as err:
            raise ExportError(f"{path} is not a safetensors file ({err}).") from None
    if not isinstance(header, dict):
        raise ExportError(f"{path} is not a safetensors file (bad header).")
    return header, 8 + size


def find_layout(component: str, keys: set[str]) -> Layout:
    """The layout of ``component`` in a file with ``keys`` (exactly one candidate must match)."""
    found = [layout for layout in LAYOUTS.get(component, ()) if layout.slot(_PROBE).key in keys]
    if len(found) != 1:
        known = ", ".join(sorted(LAYOUTS))
        what = "none" if not found else ", ".join(layout.prefix for layout in found)
        raise ExportError(
            f"Cannot place the patch's {component!r} in this checkpoint: matching layouts: {what}. "
            f"Supported: SD 1.x/2.x, SDXL, SD3 single files and bare CLIP files, components {known}."
        )
    return found[0]


def _tensor_bytes(value: torch.Tensor) -> bytes:
    return value.contiguous().view(torch.uint8).numpy().tobytes()


@dataclass(frozen=True)
class Edit:
    """Bytes to write at ``start`` (relative to the data section) and what they replace."""

    start: int
    data: bytes
    key: str


def _slot_range(entry: Mapping[str, Any], slot: Slot) -> tuple[int, int, tuple[int, ...]]:
    """(start, end, shape) of the slot inside its tensor's bytes (a fused part is a row range)."""
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if slot.part is None:
        return begin, end, shape
    if not shape or shape[0] % 3:
        raise ExportError(f"{slot.key} has shape {shape}; a fused in_proj needs 3 x D rows.")
    rows = shape[0] // 3
    row_bytes = (end - begin) // shape[0]
    start = begin + slot.part * rows * row_bytes
    return start, start + rows * row_bytes, (rows, *shape[1:])


def plan_edits(
    patch: Patch, path: Path, header: Mapping[str, Any], *, check_base: bool = True
) -> tuple[list[Edit], dict[str, Layout]]:
    """The byte edits that put every tensor of ``patch`` into the file, after checking the base weights."""
    from safetensors import safe_open

    keys = set(header) - {"__metadata__"}
    unsupported = [c for c in patch.components if c not in LAYOUTS]
    if unsupported:
        raise ExportError(
            f"The patch changes {', '.join(unsupported)}; a single-file export translates text encoders "
            "only. Use `hirm apply` for a diffusers folder of the whole patched pipeline."
        )
    layouts = {c: find_layout(c, keys) for c in patch.components}
    edits, originals = [], {}
    with safe_open(str(path), framework="pt") as handle:
        for key, value in patch.tensors.items():
            component, name = key.split("/", 1)
            slot = layouts[component].slot(name)
            if slot.key not in keys:
                raise ExportError(f"{path} has no tensor {slot.key} (for {key}).")
            entry = header[slot.key]
            if entry["dtype"] not in DTYPES:
                raise ExportError(
                    f"{slot.key} is stored as {entry['dtype']}; only float tensors can be patched."
                )
            start, end, shape = _slot_range(entry, slot)
            want = tuple(value.shape[::-1]) if slot.transpose else tuple(value.shape)
            if shape != want:
                raise ExportError(
                    f"{key} has shape {tuple(value.shape)}; the checkpoint's {slot.key} slot is {shape}."
                )
            original = handle.get_slice(slot.key)[:]
            if slot.part is not None:
                original = original[slot.part * shape[0] : (slot.part + 1) * shape[0]]
            originals[key] = original.T if slot.transpose else original
            new = value.detach().to("cpu", DTYPES[entry["dtype"]])
            data = _tensor_bytes(new.T if slot.transpose else new)
            if len(data) != end - start:
                raise ExportError(f"{slot.key}: {len(data)} bytes do not fit a slot of {end - start}.")
            edits.append(Edit(start, data, slot.key))
    if check_base:
        _check_base(patch, originals, path)
    return sorted(edits, key=lambda e: e.start), layouts


def _check_base(patch: Patch, originals: Mapping[str, torch.Tensor], path: Path) -> None:
    for component in patch.components:
        mine = {k: v for k, v in originals.items() if k.startswith(component + "/")}
        if fingerprint(mine) != patch.fingerprints.get(component):
            raise PatchMismatchError(
                f"The checkpoint's {component} is not the base the patch was made for "
                f"({patch.metadata.get('base', {}).get('source', 'another model')}): {path} holds other "
                "weights (a fine-tune, another version, or a bfloat16 copy). Export to the matching base, or "
                "pass --no-check to write it anyway."
            )


def _copy_with_edits(source: BinaryIO, target: BinaryIO, edits: Sequence[Edit], data_start: int) -> None:
    """Copy the data section of ``source`` to ``target``, replacing the edited byte ranges."""
    chunk = 1 << 24
    source.seek(data_start)
    position = 0
    for edit in [*edits, None]:
        stop = edit.start if edit is not None else None
        while stop is None or position < stop:
            block = source.read(chunk if stop is None else min(chunk, stop - position))
            if not block:
                break
            target.write(block)
            position += len(block)
        if edit is not None:
            target.write(edit.data)
            source.seek(len(edit.data), os.SEEK_CUR)
            position += len(edit.data)


def _header_bytes(header: Mapping[str, Any]) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section stays 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def export_single_file(
    patch: Patch | str | os.PathLike,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    check_base: bool = True,
) -> Path:
    """Write ``out``: ``checkpoint`` (a single-file ``.safetensors``) with the patch's encoder tensors.

    Keys, order, dtypes and every other byte are kept; the file's metadata gains ``hirm_patch`` (method,
    concepts, patch digest). The patch's base fingerprint must match the checkpoint's weights (float16
    rounding, so a float16 file of the same base passes) unless ``check_base=False``. Returns ``out``.
    """
    from hirm.evaluation.common import patch_digest

    if sys.byteorder != "little":
        raise ExportError("safetensors files are little-endian; export on a little-endian machine.")
    patch = patch if isinstance(patch, Patch) else Patch.load(patch)
    source, out = Path(checkpoint), Path(out)
    if source.suffix != ".safetensors" or not source.is_file():
        raise ExportError(
            f"{source}: give an existing single-file .safetensors checkpoint (pickled .ckpt files are not read)."
        )
    if out.resolve() == source.resolve():
        raise ExportError("--out must differ from the input checkpoint: the input is never modified.")
    header, data_start = read_header(source)
    edits, layouts = plan_edits(patch, source, header, check_base=check_base)
    meta = dict(header.get("__metadata__") or {})
    meta["hirm_patch"] = json.dumps(
        {
            "method": patch.metadata.get("method"),
            "concepts": [c.get("text") for c in patch.metadata.get("concepts", [])],
            "digest": patch_digest(patch),
            "layouts": {c: layout.prefix for c, layout in layouts.items()},
            "hirm_version": __version__,
        },
        sort_keys=True,
    )
    new_header = {"__metadata__": meta, **{k: v for k, v in header.items() if k != "__metadata__"}}

    def write(tmp: Path) -> None:
        with source.open("rb") as src, tmp.open("wb") as dst:
            dst.write(_header_bytes(new_header))
            _copy_with_edits(src, dst, edits, data_start)

    write_atomic(out, write, overwrite=overwrite)
    return out


# ----------------------------------------------------------------------------------- encoder folders


def export_encoders(
    model: str | os.PathLike,
    patch: Patch | str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Each edited encoder as ``out/<component>`` (``save_pretrained``, float32) with its tokenizer."""
    from hirm.api import save_encoders

    return save_encoders(model, patch, out, overwrite=overwrite)


# ---------------------------------------------------------------------------------------- model card


def _hub_id(source: str | None) -> str | None:
    """``source`` if it looks like a hub id (``owner/name``) rather than a local path."""
    if not source or Path(source).exists() or source.startswith((".", "/", "~")):
        return None
    return source if re.fullmatch(r"[\w.-]+/[\w.-]+", source) else None


def card_metrics(result: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(name, Share or AA value)`` of an evaluation result's erased model (canvas results)."""
    from hirm.evaluation.report import metric_shares

    shares = metric_shares(result, "erased")
    names = {"UA_heldout": "UA held-out", "UA_super": "UA super"}
    rows: list[tuple[str, Any]] = [(names.get(k, k), v) for k, v in shares.items() if v is not None]
    aa = result.get("summary", {}).get("erased", {}).get("AA")
    if aa is not None:
        rows.insert(3, ("AA", aa))
    return rows


def write_model_card(
    patch: Patch | str | os.PathLike,
    out: str | os.PathLike,
    *,
    evaluation: str | os.PathLike | None = None,
    grid: str | os.PathLike | None = None,
    base_model: str | None = None,
    license: str | None = None,  # noqa: A002 - the model card field's name
    overwrite: bool = False,
) -> Path:
    """Write ``out/README.md`` (and ``out/grid.png``, ``out/hirm-patch.safetensors``) for the Hugging Face Hub.

    The YAML header names the base model (``base_model`` or the patch's source when it is a hub id), the
    method, the erased concepts and, with ``evaluation`` (a ``hirm eval canvas`` result), the metrics as a
    ``model-index``. ``grid`` is a picture to show (``hirm generate``'s labelled ``grid.png``). Files
    already in ``out`` (e.g. ``hirm export encoder`` folders) are listed; existing card files are only
    replaced with ``overwrite``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from hirm.evaluation.common import read_result

    source = None if isinstance(patch, Patch) else Path(patch)
    patch = patch if isinstance(patch, Patch) else Patch.load(patch)
    out = Path(out)
    meta = patch.metadata
    concepts = [c.get("text") for c in meta.get("concepts", [])]
    base = base_model or _hub_id(meta.get("base", {}).get("source"))
    result = read_result(evaluation) if evaluation is not None else None
    if result is not None and result.get("kind") != "canvas":
        raise ExportError(
            f"{evaluation}: give a `hirm eval canvas` result (got a {result.get('kind')} result)."
        )
    metrics = card_metrics(result) if result else []
    title = f"{method_name(meta.get('method'))}: {', '.join(concepts)} erased" + (
        f" from {base}" if base else ""
    )
    data = ModelCardData(
        base_model=base,
        license=license,
        tags=["concept-erasure", "hirm", "text-to-image", f"method-{meta.get('method')}"],
        pipeline_tag="text-to-image",
        model_name=title,
        erased_concepts=concepts,
        eval_results=_eval_results(result, metrics) if result else None,
    )
    files = {}
    if grid is not None:
        files["grid.png"] = _existing(Path(grid))
    if source is not None:
        files["hirm-patch.safetensors"] = source
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    body = _card_body(title, patch, base, metrics, result, [*present, *files])
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    out.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        write_atomic(out / name, lambda tmp, path=path: shutil.copyfile(path, tmp), overwrite=overwrite)
    write_atomic(
        out / "README.md", lambda tmp: tmp.write_text(str(card), encoding="utf-8"), overwrite=overwrite
    )
    return out / "README.md"


def _eval_results(result: Mapping[str, Any], metrics: Sequence[tuple[str, Any]]) -> list[Any]:
    """The metrics as Hub ``model-index`` entries (percent, one decimal)."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="text-to-image",
            dataset_type="unlearncanvas-protocol",
            dataset_name=f"{result['meta'].get('model')} style x object grid",
            metric_type=name.lower().replace(" ", "-"),
            metric_name=name,
            metric_value=round(100 * (value.value if isinstance(value, Share) else value), 1),
        )
        for name, value in metrics
    ]


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ExportError(f"No file at {path}.")
    return path


def _card_body(
    title: str,
    patch: Patch,
    base: str | None,
    metrics: Sequence[tuple[str, Any]],
    result: Mapping[str, Any] | None,
    files: Sequence[str],
) -> str:
    meta = patch.metadata
    lines = [
        f"# {title}",
        "",
        f"The text encoder{'s' if len(patch.components) > 1 else ''} of "
        f"{base or meta.get('base', {}).get('source', 'the base model')} with "
        f"{', '.join(c.get('text') for c in meta.get('concepts', []))} erased by "
        f"{method_name(meta.get('method'))} with the hirm toolkit (HiRM: High-Level Representation "
        "Misdirection, [arXiv 2602.19631](https://arxiv.org/abs/2602.19631)). "
        f"Only {patch.num_parameters:,} parameters of {', '.join(patch.components)} changed.",
        "",
        "## How it was erased",
        "",
        facts_md(erasure_facts(meta)),
        "",
    ]
    if "grid.png" in files:
        lines += ["## Original vs erased (same seeds)", "", "![original vs erased](grid.png)", ""]
    if result:
        definitions = {n: (d, b) for n, d, b in metric_definitions(result.get("domain"))}
        lines += ["## Evaluation", "", "| metric | value | meaning |", "|---|---|---|"]
        for name, value in metrics:
            shown = (
                value.text() if isinstance(value, Share) else f"{100 * value:.1f} % (mean of UA, IRA, CRA)"
            )
            meaning, better = definitions.get(name, ("", ""))
            lines.append(f"| {name} | {shown} | {meaning}; {better} |")
        lines += [
            "",
            f"Target concept: {result['target']} ({result['domain']}); model {result['meta'].get('model')}.",
            "",
        ]
    lines += ["## Files and how to use them", ""]
    usage = {
        "hirm-patch.safetensors": "the patch (only the changed tensors): "
        "`hirm.apply_patch(DiffusionPipeline.from_pretrained(BASE), 'hirm-patch.safetensors')`",
        "text_encoder": "diffusers text encoder: `CLIPTextModel.from_pretrained(REPO, subfolder='text_encoder')`, "
        "then pass it as `text_encoder=` to the pipeline",
        "text_encoder_2": "the second text encoder (SDXL / SD3), likewise as `text_encoder_2=`",
    }
    for name in dict.fromkeys(files):
        if name in ("README.md", "grid.png"):
            continue
        note = usage.get(
            name,
            "single-file checkpoint for AUTOMATIC1111 / ComfyUI" if name.endswith(".safetensors") else "",
        )
        lines.append(f"- `{name}`" + (f": {note}" if note else ""))
    return "\n".join(lines) + "\n"
