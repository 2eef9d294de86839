"""Why erasing many concepts takes the kept ones with it: how far each strategy moves the conditioning.

A text-side diagnostic for ``benchmarks/multi_concept.py`` (no images): for each domain, the first
``--count`` concepts are erased with each (strategy, learning rate) of HiRM-S (world-tuned settings
otherwise: final read-out, 100 steps), and the text encoder's conditioning (``last_hidden_state``, what
the U-Net reads) of the grid prompts ``A {object} image in {style} style.`` is compared with the original
encoder's on the prompt rows (first word through the end token; padding left out, as the world's U-Net
reads the prompt rows). Per concept: the mean cosine over its 20 prompts x rows; reported per group
(erased, kept = the domain's other concepts, other domain) as the mean over concepts with a 95 %
percentile-bootstrap interval over concepts (``hirm.evaluation.common.mean_ci``) and n concepts.
A specific edit moves the erased concepts' rows and leaves the kept ones near cosine 1.

    python benchmarks/multi_concept_drift.py --out results/multi_concept_drift                   # ~15 min CPU
    python benchmarks/multi_concept_drift.py --out /tmp/d --count 2 --steps 2 --overwrite       # smoke run
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

#: (strategy, learning rate) rows: the table's joint strategy at the world-tuned lr and at 1/5 of it,
#: the paper's weight averaging, the per-concept sum, and the preserved strategy at both rates.
ROWS: tuple[tuple[str, float], ...] = (
    ("joint", 5e-4),
    ("joint", 1e-4),
    ("per-concept", 5e-4),
    ("average", 5e-4),
    ("preserved", 5e-4),
    ("preserved", 1e-4),
)
GROUPS = ("erased", "kept", "other domain")


def prompt_rows(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Boolean (B, L) mask of the rows from the first word through the first end token."""
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, row in enumerate(ids):
        end = int((row == eos_id).nonzero()[0])
        mask[i, 1 : end + 1] = True
    return mask


def concept_cosines(original, edited, ids: torch.Tensor, mask: torch.Tensor, owner: Sequence[str]) -> dict:
    """Mean cosine of the masked rows per owning concept (``owner[i]`` names prompt i's concept)."""
    from hirm.core.config import ReadingPoint
    from hirm.core.encoder import read_representation

    final = ReadingPoint(site="final")
    with torch.no_grad():
        a = read_representation(original, ids, final).float()
        b = read_representation(edited, ids, final).float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    sums: dict[str, list[float]] = {}
    for i, name in enumerate(owner):
        sums.setdefault(name, []).append(float(cos[i][mask[i]].mean()))
    return {name: sum(v) / len(v) for name, v in sums.items()}


def run(count: int, steps: int | None, rows: Sequence[tuple[str, float]]) -> dict[str, Any]:
    import hirm
    from hirm.core.config import HiRMConfig
    from hirm.core.encoder import tokenize
    from hirm.core.multi import erase_many
    from hirm.evaluation.canvas import default_canvas_and_judges
    from hirm.evaluation.common import display_name, mean_ci, run_metadata
    from hirm.evaluation.compare import WORLD_TUNED_HIRM

    sys.path.insert(0, str(Path(__file__).parent))
    from multi_concept import concepts_for, erased_concepts  # the same concepts as the image table

    canvas, _ = default_canvas_and_judges("minicanvas", None, None, torch.device("cpu"))
    model = hirm.load_model("minicanvas")
    tokenizer, original = model.tokenizer(), model.text_encoder()
    prompts, owner = [], {"style": [], "object": []}
    for obj in canvas.objects:
        for style in canvas.styles:
            prompts.append(f"A {display_name(obj)} image in {display_name(style)} style.")
            owner["object"].append(obj)
            owner["style"].append(style)
    ids = tokenize(tokenizer, prompts)
    mask = prompt_rows(ids, tokenizer.eos_token_id)
    base = replace(HiRMConfig(**WORLD_TUNED_HIRM), **({"steps": steps} if steps else {}))
    result: dict[str, Any] = {
        "meta": run_metadata(model="minicanvas", seeds=()),
        "hirm_config": base.to_dict(),
        "prompts": len(prompts),
        "domains": {},
    }
    for domain in ("object", "style"):
        other = "style" if domain == "object" else "object"
        names, note = erased_concepts(canvas, domain, count)
        kept = [n for n in canvas.names(domain) if n not in names]
        concepts = concepts_for(canvas, names, domain, "super")
        block: dict[str, Any] = {"erased": names, "kept": kept, "note": note, "rows": []}
        for strategy, lr in rows:
            keep = [display_name(n) for n in kept] if strategy == "preserved" else []
            start = time.perf_counter()
            patch = erase_many(
                model, concepts, replace(base, lr=lr), strategy=strategy, keep=keep, progress=False
            )
            seconds = time.perf_counter() - start
            edited = hirm.apply_patch(
                hirm.load_model("minicanvas").text_encoder(), patch, component="text_encoder"
            )
            by_domain = concept_cosines(original, edited, ids, mask, owner[domain])
            by_other = concept_cosines(original, edited, ids, mask, owner[other])
            groups = {
                "erased": [by_domain[n] for n in names],
                "kept": [by_domain[n] for n in kept],
                "other domain": list(by_other.values()),
            }
            block["rows"].append(
                {
                    "strategy": strategy,
                    "lr": lr,
                    "erase_s": seconds,
                    "per_concept": {**by_domain, **{f"{other}:{k}": v for k, v in by_other.items()}},
                    **{g: {**mean_ci(v), "n": len(v)} for g, v in groups.items()},
                }
            )
            print(f"{domain} {strategy} lr {lr:g}: " + ", ".join(
                f"{g} {block['rows'][-1][g]['mean']:.3f}" for g in GROUPS), flush=True)  # fmt: skip
        result["domains"][domain] = block
    return result


def to_markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        "# Conditioning drift of the multi-concept strategies",
        "",
        f"`{command}`",
        "",
        f"HiRM-S settings: {result['hirm_config']} (lr per row). Mean cosine between the original and the "
        f"edited encoder's conditioning on the prompt rows of the {result['prompts']} grid prompts, per concept; "
        "mean over concepts [95 % bootstrap interval over concepts] (n concepts). Machine: "
        f"{result['meta']['machine']}.",
        "",
        "| domain | strategy | lr | erased | kept | other domain | erase s |",
        "|---|---|---|---|---|---|---|",
    ]
    for domain, block in result["domains"].items():
        for row in block["rows"]:
            cells = " | ".join(
                f"{row[g]['mean']:.3f} [{row[g]['ci95'][0]:.3f}, {row[g]['ci95'][1]:.3f}] (n={row[g]['n']})"
                for g in GROUPS
            )
            lines.append(f"| {domain} | {row['strategy']} | {row['lr']:g} | {cells} | {row['erase_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from hirm.evaluation.common import dump_json
    from hirm.io import check_writable, write_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Directory for drift.json / drift.md.")
    parser.add_argument("--count", type=int, default=10, help="Concepts erased per domain (two always kept).")
    parser.add_argument("--steps", type=int, default=None, help="HiRM steps (default 100, world-tuned).")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing outputs.")
    args = parser.parse_args(argv)
    paths = args.out / "drift.json", args.out / "drift.md"
    for path in paths:
        check_writable(path, overwrite=args.overwrite)
    result = run(args.count, args.steps, ROWS)
    command = " ".join(
        [
            "python benchmarks/multi_concept_drift.py",
            *map(shlex.quote, sys.argv[1:] if argv is None else argv),
        ]
    )
    result["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(
        paths[0], lambda t: t.write_text(dump_json(result), encoding="utf-8"), overwrite=args.overwrite
    )
    write_atomic(
        paths[1],
        lambda t: t.write_text(to_markdown(result, command), encoding="utf-8"),
        overwrite=args.overwrite,
    )
    print(to_markdown(result, command))
    return result


if __name__ == "__main__":
    main()
