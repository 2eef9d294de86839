"""Convert a timm ViT classifier checkpoint (UnlearnCanvas's style / object judges) into a transformers
image-classification folder that ``hirm eval canvas --style-judge / --object-judge`` loads.

    python scripts/convert_unlearncanvas_classifier.py --checkpoint style50.pth --classes unlearncanvas-style -o judges/style51
    python scripts/convert_unlearncanvas_classifier.py --checkpoint cls.pth --classes unlearncanvas-object -o judges/object20

**Security.** The ``.pth`` checkpoint is a pickle, and unpickling a file can run code. This script is the
only place such a file is read, and only when you run it yourself; it reads with
``torch.load(weights_only=True)``, which refuses to build arbitrary Python objects, but run it only on a
file from a source you trust. hirm itself never loads pickles; the output holds safetensors and JSON.

**Architecture.** UnlearnCanvas builds ``timm.create_model("vit_large_patch16_224.augreg_in21k")`` and
replaces the head by ``Linear(1024, C)``: C = 51 themes (50 styles + ``Seed_Images``) or 20 objects; the
weights are under the checkpoint's ``model_state_dict`` key. Its input transform is ``Resize((224, 224))``,
``ToTensor()``, ``Normalize(0.5, 0.5)``. Any timm ``VisionTransformer`` with class-token pooling (keys
``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}``, ``norm``, ``head``) converts: sizes are read from the tensor shapes; the number of attention
heads is not in the shapes (``--heads``, 16 for ViT-L). The result is a transformers
``ViTForImageClassification`` (exact GELU, LayerNorm eps 1e-6, q/k/v split from timm's fused ``qkv``) with
``id2label`` = the class names and a ``preprocessor_config.json`` for the same input transform. Every
checkpoint tensor must be used exactly once and every model tensor filled: anything else is an error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

#: Where each timm tensor goes in transformers' ViT, per block; the first name that exists in the installed
#: transformers wins (5.x: ``vit.layers.N.attention.q_proj``; 4.x: ``vit.encoder.layer.N.attention.attention.query``).
BLOCK_PREFIXES = ("vit.layers.{i}.", "vit.encoder.layer.{i}.")
BLOCK_ROLES = {
    "q": ("attention.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"),
    "attn.proj": ("attention.o_proj", "attention.output.dense"),
    "norm1": ("layernorm_before",),
    "norm2": ("layernorm_after",),
    "mlp.fc1": ("mlp.fc1", "intermediate.dense"),
    "mlp.fc2": ("mlp.fc2", "output.dense"),
}
TOP = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight",
    "norm.bias": "vit.layernorm.bias",
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
}


def class_names(spec: str) -> list[str]:
    """``unlearncanvas-style`` (51), ``unlearncanvas-object`` (20), or a text file with one name per line."""
    from hirm.evaluation.canvas_grid import UNLEARNCANVAS_OBJECTS, UNLEARNCANVAS_STYLES, read_names

    presets = {"unlearncanvas-style": UNLEARNCANVAS_STYLES, "unlearncanvas-object": UNLEARNCANVAS_OBJECTS}
    return list(presets[spec]) if spec in presets else read_names(spec, "class names")


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a torch checkpoint (``weights_only``: plain containers and tensors only)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if key:
        if not isinstance(data, dict) or key not in data:
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise SystemExit(f"error: {path} has no {key!r} entry (it has {found}); see --key.")
        data = data[key]
    return {k.removeprefix("module."): v for k, v in data.items()}


def vit_config(state: dict[str, torch.Tensor], classes: list[str], heads: int):
    """A ``ViTConfig`` whose sizes are read from the timm tensors' shapes."""
    from transformers import ViTConfig

    width = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    side = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if state["head.weight"].shape[0] != len(classes):
        raise SystemExit(
            f"error: the head has {state['head.weight'].shape[0]} outputs but {len(classes)} class names were given."
        )
    return ViTConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
        image_size=side * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={name: i for i, name in enumerate(classes)},
    )


def convert(state: dict[str, torch.Tensor], target_keys: set[str], depth: int) -> dict[str, torch.Tensor]:
    """timm names -> the installed transformers' ViT names; q, k, v split from the fused ``qkv``."""
    source = dict(state)
    out = {TOP[k]: source.pop(k) for k in list(TOP) if k in source}
    for i in range(depth):
        prefixes = [p.format(i=i) for p in BLOCK_PREFIXES]
        prefix = next((p for p in prefixes if any(k.startswith(p) for k in target_keys)), None)
        if prefix is None:
            raise SystemExit(f"error: the installed transformers' ViT has no block {i} ({prefixes}).")
        fused = {
            s: source.pop(f"blocks.{i}.attn.qkv.{s}")
            for s in ("weight", "bias")
            if f"blocks.{i}.attn.qkv.{s}" in source
        }
        parts = {s: dict(zip("qkv", t.chunk(3, dim=0))) for s, t in fused.items()}
        for role, names in BLOCK_ROLES.items():
            name = next((n for n in names if f"{prefix}{n}.weight" in target_keys), None)
            if name is None:
                raise SystemExit(f"error: the installed transformers' ViT has no {role} in block {i}.")
            for s in ("weight", "bias"):
                tensor = (
                    parts[s][role]
                    if role in ("q", "k", "v") and s in parts
                    else source.pop(f"blocks.{i}.{role}.{s}", None)
                )
                if tensor is not None:
                    out[f"{prefix}{name}.{s}"] = tensor
    if source:
        raise SystemExit(
            f"error: checkpoint tensors not used: {sorted(source)[:5]} (not a timm ViT classifier?)."
        )
    return out


def preprocessor(size: int) -> dict:
    """UnlearnCanvas's transform: Resize((size, size)) (bilinear), [0, 1], Normalize(0.5, 0.5)."""
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def main(argv: list[str] | None = None) -> None:
    from transformers import ViTForImageClassification

    from hirm.io import atomic_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="the torch checkpoint (.pth); a pickle: see above"
    )
    p.add_argument(
        "--classes", required=True, help="unlearncanvas-style, unlearncanvas-object, or a file of names"
    )
    p.add_argument("-o", "--out", required=True, type=Path, help="the folder to write (must not exist)")
    p.add_argument(
        "--key", default="model_state_dict", help="entry holding the weights ('' = the whole file)"
    )
    p.add_argument("--heads", type=int, default=16, help="attention heads (ViT-L: 16, ViT-B: 12)")
    a = p.parse_args(argv)
    classes = class_names(a.classes)
    state = read_state_dict(a.checkpoint, a.key)
    config = vit_config(state, classes, a.heads)
    model = ViTForImageClassification(config)
    weights = convert(state, set(model.state_dict()), config.num_hidden_layers)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise SystemExit(f"error: model tensors not filled {missing[:5]}, unknown {unexpected[:5]}.")
    with atomic_path(a.out, directory=True, kind="judge") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor(config.image_size), indent=2))
    print(
        f"{len(classes)}-class ViT ({config.num_hidden_layers} blocks, width {config.hidden_size}) -> {a.out}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
