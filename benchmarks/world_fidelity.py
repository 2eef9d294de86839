"""The MiniCanvas fidelity card: does the world read concepts where Stable Diffusion does?

    python benchmarks/world_fidelity.py --precision bf16 --json results/world_fidelity.json   # shipped world, as recorded
    python benchmarks/world_fidelity.py --assets .world_build/assets --seeds 0      # a fresh build

Probes (every style x object pair, prompt ``A {object} image in {style} style.``, one image per pair and
seed, judged by the world's judges; every figure with n and a 95 % Wilson interval):

1. padding test (Padding Tone): prompt rows + the empty prompt's padding ("clean pads") vs the unmodified
   conditioning; padding rows + the empty prompt's prompt rows (the prompted object should be at chance);
2. token swap: only the concept word's rows from the same prompt written with another concept of equal
   token count (judged as the other concept?), or only the padding rows (does the verdict change?);
3. causal tracing of objects and styles through the text encoder (``hirm trace``'s algorithm): where the
   restoration of one block's output at one position brings the clean conditioning back. The heat-maps
   are written next to the JSON (``*_trace_<concept>.png``).
The published-settings and base-quality parts of the card come from ``hirm compare`` and
``benchmarks/world_quality.py`` (see docs/world.md); this script measures the three probes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hirm.cli.common import sampling_precision
from hirm.evaluation.common import machine_text
from hirm.evaluation.fidelity import (
    ProbeSettings,
    generate_from_rows,
    judged,
    swap_rows,
    text_rows,
    trace_concept,
    trace_heatmap,
    with_clean_pads,
    with_clean_prompt,
)
from hirm.evaluation.metrics import proportion
from hirm.world import (
    CANVAS_TEMPLATE,
    OBJECTS,
    STYLES,
    canonical_name,
    display_name,
    load_judges,
    load_pipeline,
    make_prompt,
)

TRACED = ("Cats", "Dogs", "Trees", "Towers", "Pastel", "Van_Gogh", "Winter", "Mosaic")


def partners(tokenizer, domain: str, seed: int) -> dict[tuple[int, int], tuple[int, int]]:
    """For every pair (s, o): the pair with the concept of ``domain`` replaced by another one whose
    canonical prompt has the same token count (drawn with ``seed``); pairs without one are left out."""
    rng = np.random.default_rng([seed, 7 if domain == "style" else 8])
    length = {
        (s, o): len(tokenizer(make_prompt(CANVAS_TEMPLATE, style=STYLES[s], object=OBJECTS[o])).input_ids)
        for s in range(len(STYLES))
        for o in range(len(OBJECTS))
    }
    out = {}
    for (s, o), n in length.items():
        if domain == "style":
            cands = [(x, o) for x in range(len(STYLES)) if x != s and length[(x, o)] == n]
        else:
            cands = [(s, x) for x in range(len(OBJECTS)) if x != o and length[(s, x)] == n]
        if cands:
            out[(s, o)] = cands[int(rng.integers(len(cands)))]
    return out


def probe_padding_and_swap(pipe, judges, seeds: list[int], settings: ProbeSettings) -> dict:
    pairs = [(s, o) for s in range(len(STYLES)) for o in range(len(OBJECTS))]
    prompt = {p: make_prompt(CANVAS_TEMPLATE, style=STYLES[p[0]], object=OBJECTS[p[1]]) for p in pairs}
    items = [(p, seed) for p in pairs for seed in seeds]
    rows, ids, eot = text_rows(pipe, [prompt[p] for p, _ in items])
    empty = text_rows(pipe, [""])[0][0]
    seed_list = [seed for _, seed in items]

    def verdicts(cond: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        images = generate_from_rows(pipe, cond, seed_list, settings, progress=True)
        return judged(judges["style"], images), judged(judges["object"], images)

    s_true = np.array([p[0] for p, _ in items])
    o_true = np.array([p[1] for p, _ in items])
    base_s, base_o = verdicts(rows)
    pad_s, pad_o = verdicts(with_clean_pads(rows, eot, empty))
    cp_s, cp_o = verdicts(with_clean_prompt(rows, eot, empty))
    out: dict = {
        "n_images_per_probe": len(items),
        "unmodified": {"style": proportion(base_s == s_true), "object": proportion(base_o == o_true)},
        "clean_pads": {"style": proportion(pad_s == s_true), "object": proportion(pad_o == o_true)},
        "clean_prompt": {"style": proportion(cp_s == s_true), "object": proportion(cp_o == o_true)},
        "chance": {"style": 1 / len(STYLES), "object": 1 / len(OBJECTS)},
    }
    for key in ("style", "object"):
        u, c = out["unmodified"][key]["value"], out["clean_pads"][key]["value"]
        out["clean_pads"][key]["ratio_to_unmodified"] = c / u if u else None
    for domain, base in (("style", base_s), ("object", base_o)):
        part = partners(pipe.tokenizer, domain, seed=0)
        sel = [i for i, (p, _) in enumerate(items) if p in part]
        other = [part[items[i][0]] for i in sel]
        o_rows, o_ids, _ = text_rows(pipe, [prompt[q] for q in other])
        want = np.array([q[0] if domain == "style" else q[1] for q in other])
        res = {}
        for part_name in ("word", "padding"):
            cond = swap_rows(rows[sel], o_rows, ids[sel], o_ids, eot[sel], part=part_name)
            images = generate_from_rows(pipe, cond, [seed_list[i] for i in sel], settings, progress=True)
            got = judged(judges[domain], images)
            res[part_name] = {
                "judged_as_other": proportion(got == want),
                "verdict_changed": proportion(got != base[sel]),
            }
        res["pairs"] = len(sel)
        out[f"swap_{domain}"] = res
    return out


def probe_trace(pipe, out_prefix: Path | None, concepts: list[str]) -> dict:
    result = {}
    for concept in concepts:
        name = display_name(concept)
        if concept in OBJECTS:
            prompts = [make_prompt(CANVAS_TEMPLATE, style=s, object=concept) for s in STYLES[:8]]
        else:
            prompts = [make_prompt(CANVAS_TEMPLATE, style=concept, object=o) for o in OBJECTS[:8]]
        tr = trace_concept(pipe.text_encoder, pipe.tokenizer, prompts, name)
        layer, pos = np.unravel_index(int(np.argmax(tr.scores)), tr.scores.shape)
        entry = {
            "positions": tr.positions,
            "scores": np.round(tr.scores, 4).tolist(),
            "best": {
                "layer": int(layer),
                "position": tr.positions[pos],
                "score": float(tr.scores[layer, pos]),
            },
            "concept_last_token_by_layer": np.round(tr.scores[:, tr.positions.index("concept")], 4).tolist(),
            "n_prompts": len(prompts),
        }
        if out_prefix is not None:
            png = out_prefix.with_name(f"{out_prefix.stem}_trace_{concept}.png")
            trace_heatmap(tr, title=f"causal trace: {name}").save(png)
            entry["heatmap"] = png.name
        result[concept] = entry
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--assets", type=Path, default=None, help="world assets directory (default: shipped)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per style x object pair")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="sampling arithmetic; auto = bf16 autocast where the CPU/GPU has native bf16 (emulated bf16 is "
        "~13x slower than fp32: benchmarks/precision_speed.py), else fp32. The card records which ran",
    )
    p.add_argument(
        "--trace",
        nargs="*",
        default=[c for c in TRACED if c in STYLES + OBJECTS],
        help="concepts to trace (default: those of Cats, Dogs, Trees, Towers, Pastel, Van_Gogh, Winter, "
        "Mosaic that the world has)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the card here (and heat-maps beside it)")
    a = p.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    pipe = load_pipeline(root=a.assets)
    judges = load_judges(root=a.assets)
    settings = ProbeSettings(precision=sampling_precision(a.precision, "cpu"))
    card = {
        "machine": machine_text(),
        "settings": {**settings.__dict__, "seeds": a.seeds, "prompt": CANVAS_TEMPLATE},
    }
    card["padding_and_swap"] = probe_padding_and_swap(pipe, judges, a.seeds, settings)
    card["trace"] = probe_trace(pipe, a.json, [canonical_name(c) for c in a.trace])
    card["wall_s"] = round(time.time() - t0, 1)
    text = json.dumps(card, indent=2)
    print(text)
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
