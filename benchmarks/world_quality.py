"""Measure the MiniCanvas world's quality: judged accuracy of MiniSD's images, MiniCLIP zero-shot figures,
the judges on fresh renders, and CPU time.

    python benchmarks/world_quality.py                 # shipped assets, defaults from GENERATION_DEFAULTS
    python benchmarks/world_quality.py --json out.json # also write the figures as JSON

Grids (every style x object prompt):
- "train": ``CANVAS_TEMPLATE`` (a training template), ``--seeds`` seeds per prompt (default 3);
- "heldout": each held-out template naming both concepts, ``--heldout-seeds`` seeds (default 1);
- "synonyms": the held-out templates with both concepts written by one of their training synonyms
  (``cat`` / ``kitten`` for Cats; which one alternates over pairs and templates), 1 seed.
An image counts as correct for style (object) if the style (object) judge's argmax is the prompted one.
Every accuracy comes with its n and a 95 % Wilson interval.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hirm.evaluation.common import machine_text
from hirm.evaluation.metrics import proportion
from hirm.world import (
    CANVAS_TEMPLATE,
    GENERATION_DEFAULTS,
    HELDOUT_TEMPLATES,
    OBJECTS,
    STYLES,
    grid_templates,
    load_clip,
    load_judges,
    load_pipeline,
    make_prompt,
)
from hirm.world.clip import encode_texts, zero_shot_report
from hirm.world.concepts import OBJECT_SYNONYMS, STYLE_SYNONYMS
from hirm.world.judges import judge_accuracy
from hirm.world.rendering import render_grid

PRECISION = "fp32"  # sampling arithmetic; --precision sets it


def generate(pipe, prompts: list[str], seeds: list[int], *, batch: int, device: str) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1]; image i uses ``torch.Generator().manual_seed(seeds[i])``."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + batch]]
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
            res = pipe(prompts[i : i + batch], generator=gens, output_type="pt", **GENERATION_DEFAULTS)
        out.append(res.images.float().cpu())
    return torch.cat(out)


def acc(hits: np.ndarray) -> dict:
    """Accuracy with n and a 95 % Wilson interval."""
    return proportion(hits)


def fmt(p: dict) -> str:
    """``97.2 % [96.1, 98.0] (n=1200)``."""
    lo, hi = p["ci95"]
    return f"{100 * p['value']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] (n={p['n']})"


def judged_grid(
    pipe, judges, templates: list[str], n_seeds: int, *, batch: int, device: str, synonyms: bool = False
) -> dict:
    prompts, seeds, s_lab, o_lab, t_lab = [], [], [], [], []
    for ti, t in enumerate(templates):
        for si, s in enumerate(STYLES):
            for oi, o in enumerate(OBJECTS):
                for k in range(n_seeds):
                    words = {}
                    if synonyms:  # alternate the two training synonyms over pairs and templates
                        words = {
                            "style_word": STYLE_SYNONYMS[s][(si + oi + ti) % 2],
                            "object_word": OBJECT_SYNONYMS[o][(si + 2 * oi + ti) % 2],
                        }
                    prompts.append(make_prompt(t, style=s, object=o, **words))
                    seeds.append(k)
                    s_lab.append(si)
                    o_lab.append(oi)
                    t_lab.append(ti)
    t0, c0 = time.time(), time.process_time()
    imgs = generate(pipe, prompts, seeds, batch=batch, device=device)
    wall, cpu = time.time() - t0, time.process_time() - c0
    s_lab, o_lab, t_lab = np.array(s_lab), np.array(o_lab), np.array(t_lab)
    ps = judges["style"](imgs).argmax(1).cpu().numpy()
    po = judges["object"](imgs).argmax(1).cpu().numpy()
    return {
        "templates": templates,
        "synonyms": synonyms,
        "images": len(prompts),
        "style": acc(ps == s_lab),
        "object": acc(po == o_lab),
        "both": acc((ps == s_lab) & (po == o_lab)),
        "style_acc": float((ps == s_lab).mean()),
        "object_acc": float((po == o_lab).mean()),
        "both_acc": float(((ps == s_lab) & (po == o_lab)).mean()),
        "per_style_acc": {s: float((ps[s_lab == i] == i).mean()) for i, s in enumerate(STYLES)},
        "per_object_acc": {o: float((po[o_lab == i] == i).mean()) for i, o in enumerate(OBJECTS)},
        "per_template": {
            t: {
                "style_acc": float((ps == s_lab)[t_lab == i].mean()),
                "object_acc": float((po == o_lab)[t_lab == i].mean()),
            }
            for i, t in enumerate(templates)
        },
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
    }


@torch.no_grad()
def heldout_text_match(clip, tok, *, device: str) -> dict:
    """Per held-out template: how often MiniCLIP's pooled text embedding of a held-out prompt is nearest
    (cosine) the canonical-template prompt of the same style (object) among all canonical prompts."""

    def embed(prompts: list[str]) -> torch.Tensor:
        return encode_texts(clip, tok, prompts, torch.device(device))

    pairs = [(s, o) for s in STYLES for o in OBJECTS]
    ref = embed([make_prompt(CANVAS_TEMPLATE, style=s, object=o) for s, o in pairs])
    truth = torch.arange(len(pairs), device=ref.device)
    res = {}
    for t in grid_templates(HELDOUT_TEMPLATES):
        nearest = (embed([make_prompt(t, style=s, object=o) for s, o in pairs]) @ ref.T).argmax(1)
        n_obj = len(OBJECTS)
        res[t] = {
            "style_acc": float((nearest // n_obj == truth // n_obj).float().mean()),
            "object_acc": float((nearest % n_obj == truth % n_obj).float().mean()),
        }
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds per prompt on the training-template grid")
    p.add_argument("--heldout-seeds", type=int, default=1, help="seeds per prompt and held-out template")
    p.add_argument("--batch", type=int, default=64, help="images per pipeline call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="sampling arithmetic")
    p.add_argument("--assets", type=Path, default=None, help="world assets (default: the shipped ones)")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    a = p.parse_args()

    global PRECISION
    PRECISION = a.precision
    torch.manual_seed(0)
    pipe = load_pipeline(device=a.device, root=a.assets)
    pipe.set_progress_bar_config(disable=True)
    judges = load_judges(device=a.device, root=a.assets)
    clip, tok = load_clip(device=a.device, root=a.assets)
    report: dict = {
        "generation_defaults": GENERATION_DEFAULTS,
        "precision": a.precision,
        "machine": machine_text(),
        "torch_threads": torch.get_num_threads(),
    }

    x, s, o = render_grid(4, seed0=2_000_000_000)
    fresh = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    report["judges_fresh"] = {
        "style_acc": judge_accuracy(judges["style"], fresh, s),
        "object_acc": judge_accuracy(judges["object"], fresh, o),
        "images": len(x),
    }
    report["clip_zero_shot"] = zero_shot_report(clip, tok, fresh, s, o, device=torch.device(a.device))
    report["clip_heldout_text"] = heldout_text_match(clip, tok, device=a.device)

    prompts = [
        make_prompt(CANVAS_TEMPLATE, style=STYLES[i % len(STYLES)], object=OBJECTS[i % len(OBJECTS)])
        for i in range(a.batch)
    ]
    generate(pipe, prompts[:2], [0, 1], batch=2, device=a.device)  # warm-up
    t0, c0 = time.time(), time.process_time()
    generate(pipe, prompts, list(range(a.batch)), batch=a.batch, device=a.device)
    report["batch_time"] = {
        "images": a.batch,
        "wall_s": round(time.time() - t0, 2),
        "cpu_s": round(time.process_time() - c0, 2),
    }

    report["grid_train"] = judged_grid(
        pipe, judges, [CANVAS_TEMPLATE], a.seeds, batch=a.batch, device=a.device
    )
    report["grid_heldout"] = judged_grid(
        pipe, judges, list(grid_templates(HELDOUT_TEMPLATES)), a.heldout_seeds, batch=a.batch, device=a.device
    )
    report["grid_synonyms"] = judged_grid(
        pipe,
        judges,
        list(grid_templates(HELDOUT_TEMPLATES)),
        1,
        batch=a.batch,
        device=a.device,
        synonyms=True,
    )

    print(
        f"judges on fresh renders: style {report['judges_fresh']['style_acc']:.4f}, "
        f"object {report['judges_fresh']['object_acc']:.4f} ({len(x)} images)"
    )
    zs = report["clip_zero_shot"]
    print(
        f"MiniCLIP zero-shot: style {zs['zero_shot_style_acc']:.4f}, object {zs['zero_shot_object_acc']:.4f}, "
        f"text->image R@1 {zs['retrieval_r1']:.4f}"
    )
    for name in ("grid_train", "grid_heldout", "grid_synonyms"):
        g = report[name]
        print(
            f"{name}: style {fmt(g['style'])}, object {fmt(g['object'])}, "
            f"both {fmt(g['both'])}; wall {g['wall_s']} s, cpu {g['cpu_s']} s"
        )
        worst_s = sorted(g["per_style_acc"].items(), key=lambda kv: kv[1])[:3]
        worst_o = sorted(g["per_object_acc"].items(), key=lambda kv: kv[1])[:3]
        print(f"  weakest styles {worst_s}; weakest objects {worst_o}")
        if name != "grid_train":
            for t, acc in g["per_template"].items():
                print(f"  {t!r}: style {acc['style_acc']:.4f}, object {acc['object_acc']:.4f}")
    for t, acc in report["clip_heldout_text"].items():
        print(
            f"MiniCLIP held-out text -> canonical prompt {t!r}: "
            f"style {acc['style_acc']:.4f}, object {acc['object_acc']:.4f}"
        )
    bt = report["batch_time"]
    print(
        f"one batch of {bt['images']} images: wall {bt['wall_s']} s, cpu {bt['cpu_s']} s "
        f"({GENERATION_DEFAULTS['num_inference_steps']} DDIM steps, guidance {GENERATION_DEFAULTS['guidance_scale']})"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
