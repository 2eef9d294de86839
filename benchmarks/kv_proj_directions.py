"""Which of KV-Proj's directions does the U-Net need to erase a concept, and which take other concepts away?

For one world concept, KV-Proj's ``rank`` directions (as ``benchmarks/attacks.py``'s ``kv-proj-<rank>``:
the world's training templates, the domain's other concepts as contrast) are projected out of the U-Net's
cross-attention in several ways, each judged on the grid (UA, IRA, CRA with 95 % Wilson intervals and n;
the three objects and styles recognised least often):

* ``keys+values``: all directions, keys and values (what ``kv-proj-<rank>`` does);
* ``both:j``: direction j alone, keys and values;
* ``values``: all directions, values only; ``keys``: all directions, keys only;
* ``keys:j+values``: values blind to all directions, keys to direction j alone (what ``KVProjConfig.key_rank``
  = 1 does when the U-Net score picks j).

Also each direction's ``toward`` score (``hirm.core.kv_proj.toward_scores``, the training templates'
noised latents, never the grid) and the direction ``key_rank`` = 1 picks. This is the measurement
behind ``key_rank`` (the module docstring of ``hirm.core.kv_proj``)::

    python benchmarks/kv_proj_directions.py --concept Neon_Lines --out results/kv_proj_directions
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

import torch

import hirm
from hirm.core.config import Concept
from hirm.core.kv_proj import KVProjConfig, blind, concept_directions, key_directions
from hirm.core.patch import make_patch
from hirm.evaluation.canvas import CanvasEvaluator, CanvasSettings, make_cache
from hirm.evaluation.canvas_grid import Canvas
from hirm.evaluation.common import dump_json, machine_text, now_iso
from hirm.evaluation.compare import world_templates
from hirm.evaluation.metrics import wilson_interval
from hirm.world import assets as world
from hirm.world.concepts import display_name


def judged(result: dict[str, Any], concept: str) -> dict[str, Any]:
    grid = result["metrics"]["erased"]["grid"]
    out: dict[str, Any] = {}
    for key, n_key in (("UA", "n_target"), ("IRA", "n_in_domain"), ("CRA", "n_cross")):
        n = grid[n_key]
        k = round(grid[key] * n)
        out[key] = {"rate": grid[key], "n": n, "ci95": wilson_interval(k, n)}
    rows = [r for r in result.get("rows", {}).get("erased", []) if r.get("split") == "grid"]
    for role in ("object", "style"):
        seen = collections.defaultdict(lambda: [0, 0])
        for r in rows:
            if role == "style" and r["style"] == concept:
                continue
            seen[r[role]][0] += r[f"pred_{role}"] == r[role]
            seen[r[role]][1] += 1
        out[f"least_{role}s"] = sorted(
            ([name, k, n] for name, (k, n) in seen.items()), key=lambda x: x[1] / x[2]
        )[:3]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concept", default="Neon_Lines", help="a world style or object (any spelling)")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--seeds", default="188", help="grid seeds")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--out", type=Path, required=True, help="directory for directions.json / .md")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from hirm.cli.common import sampling_precision

    handle = hirm.load_model("minicanvas")
    canvas = Canvas.from_world()
    name = canvas.erasable(args.concept)
    domain = canvas.domain(name)
    text = display_name(name)
    others = canvas.styles if domain == "style" else canvas.objects
    config = KVProjConfig(
        rank=args.rank,
        key_rank=1,
        templates=world_templates(domain),
        contrast=tuple(display_name(x) for x in others if x != name),
    )
    concept = Concept(text, kind=domain)
    encoder, tokenizer = handle.text_encoder("text_encoder"), handle.tokenizer("text_encoder")
    unet = handle.component("unet")
    (part,) = concept_directions(encoder, tokenizer, [concept], config)
    _, (record,) = key_directions(handle, encoder, tokenizer, [concept], config, [part])
    variants: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {
        "keys+values": (part, part),
        **{f"both:{j}": (part[:, [j]], part[:, [j]]) for j in range(args.rank)},
        "values": (None, part),
        "keys": (part, None),
        **{f"keys:{j}+values": (part[:, [j]], part) for j in range(args.rank)},
    }
    settings = CanvasSettings.for_world(
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        heldout_templates=(),
        super_templates=(),
        precision=sampling_precision(args.precision, "cpu"),
    )
    evaluator = CanvasEvaluator(
        handle.pipeline(), canvas=canvas, judges=world.load_judges(), settings=settings,
        cache=make_cache(None, handle.path, True), progress=not args.quiet,
    )  # fmt: skip
    figures = {}
    for label, (keys, values) in variants.items():
        originals, edited = blind(unet, keys=keys, values=values)
        patch = make_patch(
            method="kv-proj", originals=originals, edited=edited, config=config.to_dict(),
            concepts=[concept.record(target=False)], base=handle.base_info(), extra={"variant": label},
        )  # fmt: skip
        result, _ = evaluator.evaluate(name, patches=[patch], baseline=False)
        figures[label] = judged(result, name)
        f = figures[label]
        print(label, *(f"{m} {100 * f[m]['rate']:.1f}" for m in ("UA", "IRA", "CRA")), flush=True)
    report = {
        "kind": "kv_proj_directions", "date": now_iso(), "argv": sys.argv, "machine": machine_text(),
        "concept": name, "config": config.to_dict(), "toward": record, "settings": settings.to_dict(),
        "figures": figures,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "directions.json").write_text(dump_json(report))
    lines = [
        f"# KV-Proj's directions for {text} (rank {args.rank}, grid seeds {args.seeds})",
        "",
        f"`toward` per direction: {record['toward']}; key_rank = 1 picks {record['keys']}.",
        "",
        "| variant | UA | IRA | CRA | objects recognised least | styles recognised least |",
        "|---|---|---|---|---|---|",
    ]
    for label, f in figures.items():
        cells = [
            f"{100 * f[m]['rate']:.1f} [{100 * f[m]['ci95'][0]:.0f}–{100 * f[m]['ci95'][1]:.0f}] (n={f[m]['n']})"
            for m in ("UA", "IRA", "CRA")
        ]
        least = [", ".join(f"{x} {k}/{n}" for x, k, n in f[f"least_{r}s"]) for r in ("object", "style")]
        lines.append(f"| {label} | " + " | ".join(cells + least) + " |")
    lines += ["", f"- machine: {machine_text()}; {now_iso()}", f"- command: `python {' '.join(sys.argv)}`"]
    (args.out / "directions.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
