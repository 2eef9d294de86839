"""Why erasing many concepts takes the kept ones with it: how far each strategy moves the conditioning.

A text-side diagnostic for ``benchmarks/multi_concept.py`` (no images): for each domain, the first
``--count`` concepts are erased with each (strategy, learning rate) of HiRM-S (world-tuned settings
otherwise: final read-out, 100 steps), and the text encoder's conditioning (``last_hidden_state``, what
the U-Net reads) of the grid prompts ``A {object} image in {style} style.`` is compared with the original
encoder's on the prompt rows (first word through the end token; padding left out, as the world's U-Net
reads the prompt rows). Per concept: the mean cosine over its 20 prompts x rows; reported per group
(erased, kept = the domain's other concepts, other domain) as the mean over concepts with a 95 %
percentile-bootstrap interval over concepts (``hirm.evaluation.common.mean_ci``) and n concepts.
A specific edit moves the erased concepts' rows and leaves the kept ones near cosine 1. The group
``kept, bare`` is the same cosine on the kept concepts' bare names (``Horses``), the prompts a
``preserved`` row is told to keep: far nearer 1 than the grid's sentences naming them where the preserve
set does not reach sentences.

    python benchmarks/multi_concept_drift.py --out results/multi_concept_drift                   # ~15 min CPU
    python benchmarks/multi_concept_drift.py --out /tmp/d --count 2 --steps 2 --overwrite       # smoke run
    python benchmarks/multi_concept_drift.py --out DIR --domains style --target empty --keep-other-domain \
        --steps 400 --rows preserved:5e-4,preserved-sentences:5e-4
        # the multi-concept table's chosen styles row, without and with --keep-sentences
    python benchmarks/multi_concept_drift.py --out DIR --domains object --erase Cats,Horses --each \
        --target empty --rows preserved:5e-4,preserved-sentences:5e-4
        # one concept at a time, as the attack entries hirm-empty-keep and hirm-empty-keep-sent erase

``--rows`` takes ``strategy:lr`` pairs; ``preserved-sentences`` is ``preserved`` that also keeps
sentences naming the kept concepts: with ``--keep-other-domain`` those of ``multi_concept.py
--keep-sentences`` (each concept of the other domain with two kept ones), otherwise those of the attack
entries' ``Entry.preserve_sentences`` (each kept concept with two of the other domain); both in the world's
training templates, never the grid's. ``--each`` erases the ``--erase`` concepts one at a time (a row per
concept); the groups are then over that one erased concept and its domain's other concepts.
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
GROUPS = ("erased", "kept", "kept, bare", "other domain")


def prompt_rows(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Boolean (B, L) mask of the rows from the first word through the first end token."""
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, row in enumerate(ids):
        end = int((row == eos_id).nonzero()[0])
        mask[i, 1 : end + 1] = True
    return mask


def conditioning(encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The final hidden state of ``ids`` up to the last masked row (float32). The encoder is causal, so
    the rows up to there do not depend on the padding after them: leaving it out changes no masked row."""
    from hirm.core.config import ReadingPoint
    from hirm.core.encoder import read_representation

    length = int(mask.any(0).nonzero().max()) + 1
    with torch.no_grad():
        return read_representation(encoder, ids[:, :length], ReadingPoint(site="final")).float()


def cosines_by_owner(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, owner: Sequence[str]) -> dict:
    """Mean cosine of the masked rows of two conditionings, per owning concept (``owner[i]``: prompt i's)."""
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    mask = mask[:, : cos.shape[1]]
    sums: dict[str, list[float]] = {}
    for i, name in enumerate(owner):
        sums.setdefault(name, []).append(float(cos[i][mask[i]].mean()))
    return {name: sum(v) / len(v) for name, v in sums.items()}


def concept_cosines(original, edited, ids: torch.Tensor, mask: torch.Tensor, owner: Sequence[str]) -> dict:
    """Mean cosine of the masked rows per owning concept (``owner[i]`` names prompt i's concept)."""
    return cosines_by_owner(conditioning(original, ids, mask), conditioning(edited, ids, mask), mask, owner)


def parse_rows(text: str) -> tuple[tuple[str, float], ...]:
    """``strategy:lr,strategy:lr`` -> rows; a one-line error for anything else."""
    from hirm.core.multi import STRATEGIES

    rows = []
    for part in text.split(","):
        strategy, _, lr = part.strip().partition(":")
        if strategy not in (*STRATEGIES, "preserved-sentences"):
            raise SystemExit(
                f"--rows: unknown strategy {strategy!r}; choose from {[*STRATEGIES, 'preserved-sentences']}."
            )
        try:
            rows.append((strategy, float(lr)))
        except ValueError:
            raise SystemExit(f"--rows: {part!r} is not strategy:lr, e.g. preserved:5e-4.") from None
    return tuple(rows)


def run(
    count: int,
    steps: int | None,
    rows: Sequence[tuple[str, float]],
    *,
    domains: Sequence[str] = ("object", "style"),
    target: str = "super",
    keep_other_domain: bool = False,
    erase: Sequence[str] = (),
    each: bool = False,
) -> dict[str, Any]:
    import hirm
    from hirm.core.config import HiRMConfig
    from hirm.core.encoder import tokenize
    from hirm.core.multi import erase_many
    from hirm.evaluation.canvas import default_canvas_and_judges
    from hirm.evaluation.common import display_name, mean_ci, run_metadata
    from hirm.evaluation.compare import WORLD_TUNED_HIRM

    sys.path.insert(0, str(Path(__file__).parent))
    from multi_concept import concepts_for, erased_concepts, keep_sentences  # as the image table

    from hirm.evaluation.compare import pair_sentences

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
    bare_ids = tokenize(tokenizer, [display_name(n) for n in canvas.names("object") + canvas.names("style")])
    bare_owner = [*canvas.names("object"), *canvas.names("style")]
    bare_mask = prompt_rows(bare_ids, tokenizer.eos_token_id)
    original_grid, original_bare = (
        conditioning(original, ids, mask),
        conditioning(original, bare_ids, bare_mask),
    )
    base = replace(HiRMConfig(**WORLD_TUNED_HIRM), **({"steps": steps} if steps else {}))
    result: dict[str, Any] = {
        "meta": run_metadata(model="minicanvas", seeds=()),
        "hirm_config": base.to_dict(),
        "target": target,
        "keep_other_domain": keep_other_domain,
        "prompts": len(prompts),
        "domains": {},
    }
    for domain in domains:
        other = "style" if domain == "object" else "object"
        if erase:
            unknown = [n for n in erase if n not in canvas.names(domain)]
            if unknown:
                raise SystemExit(
                    f"--erase: {unknown} are not {domain}s of the world; choose from {list(canvas.names(domain))}."
                )
            names, note = list(erase), None
        else:
            names, note = erased_concepts(canvas, domain, count)
        block: dict[str, Any] = {"erased": names, "note": note, "rows": []}
        for erased in [[n] for n in names] if each else [names]:
            kept = [n for n in canvas.names(domain) if n not in erased]
            concepts = concepts_for(canvas, erased, domain, target)
            for strategy, lr in rows:
                keep: list[str] = []
                if strategy.startswith("preserved"):
                    partners = canvas.names(other) if keep_other_domain else []
                    keep = [display_name(n) for n in (*kept, *partners)]
                if strategy == "preserved-sentences":
                    if keep_other_domain:
                        keep += keep_sentences(canvas, kept, domain)
                    else:
                        words = [display_name(n) for n in canvas.names(other)]
                        keep += pair_sentences([display_name(n) for n in kept], domain, words)
                start = time.perf_counter()
                strategy_run = "preserved" if strategy == "preserved-sentences" else strategy
                patch = erase_many(
                    model, concepts, replace(base, lr=lr), strategy=strategy_run, keep=keep, progress=False
                )
                seconds = time.perf_counter() - start
                edited = hirm.apply_patch(
                    hirm.load_model("minicanvas").text_encoder(), patch, component="text_encoder"
                )
                grid, names_alone = conditioning(edited, ids, mask), conditioning(edited, bare_ids, bare_mask)
                by_domain = cosines_by_owner(original_grid, grid, mask, owner[domain])
                by_other = cosines_by_owner(original_grid, grid, mask, owner[other])
                bare = cosines_by_owner(original_bare, names_alone, bare_mask, bare_owner)
                groups = {
                    "erased": [by_domain[n] for n in erased],
                    "kept": [by_domain[n] for n in kept],
                    "kept, bare": [bare[n] for n in kept],
                    "other domain": list(by_other.values()),
                }
                block["rows"].append(
                    {
                        "strategy": strategy,
                        "lr": lr,
                        "erased_concepts": erased,
                        "erase_s": seconds,
                        "per_concept": {**by_domain, **{f"{other}:{k}": v for k, v in by_other.items()}},
                        **{g: {**mean_ci(v), "n": len(v)} for g, v in groups.items()},
                    }
                )
                print(f"{domain} {','.join(erased)} {strategy} lr {lr:g}: " + ", ".join(
                    f"{g} {block['rows'][-1][g]['mean']:.3f}" for g in GROUPS), flush=True)  # fmt: skip
        result["domains"][domain] = block
    return result


def to_markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        "# Conditioning drift of the multi-concept strategies",
        "",
        f"`{command}`",
        "",
        f"HiRM settings: {result['hirm_config']} (lr per row); target: {result.get('target', 'super')}"
        f"{'; preserved rows also keep the other domain' if result.get('keep_other_domain') else ''}. "
        "Mean cosine between the original and the "
        f"edited encoder's conditioning on the prompt rows of the {result['prompts']} grid prompts, per concept; "
        "mean over concepts [95 % bootstrap interval over concepts] (n concepts). Machine: "
        f"{result['meta']['machine']}.",
        "",
        "Groups: the erased concepts' and the kept ones' grid prompts, the kept ones' bare names, and the "
        "grid prompts per concept of the other domain.",
        "",
        "| domain | erased concepts | strategy | lr | erased | kept | kept, bare | other domain | erase s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for domain, block in result["domains"].items():
        for row in block["rows"]:
            cells = " | ".join(_cell(row.get(g)) for g in GROUPS)
            erased = ", ".join(row.get("erased_concepts", block["erased"]))
            lines.append(
                f"| {domain} | {erased} | {row['strategy']} | {row['lr']:g} | {cells} | {row['erase_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _cell(stats: dict[str, Any] | None) -> str:
    if not stats:  # a table written before the group was measured
        return "–"
    return f"{stats['mean']:.3f} [{stats['ci95'][0]:.3f}, {stats['ci95'][1]:.3f}] (n={stats['n']})"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from hirm.evaluation.common import dump_json
    from hirm.io import check_writable, write_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Directory for drift.json / drift.md.")
    parser.add_argument("--count", type=int, default=10, help="Concepts erased per domain (two always kept).")
    parser.add_argument("--steps", type=int, default=None, help="HiRM steps (default 100, world-tuned).")
    parser.add_argument("--domains", default="object,style", help="Comma-separated, in order.")
    parser.add_argument(
        "--rows",
        default=",".join(f"{s}:{lr:g}" for s, lr in ROWS),
        help="strategy:lr pairs (strategies of hirm.core.multi, or preserved-sentences)",
    )
    parser.add_argument("--target", choices=("super", "empty"), default="super", help="as multi_concept.py")
    parser.add_argument(
        "--keep-other-domain",
        action="store_true",
        help="preserved rows also keep the other domain's concepts",
    )
    parser.add_argument(
        "--erase", default=None, help="Comma-separated concepts to erase instead of the first --count."
    )
    parser.add_argument("--each", action="store_true", help="erase the --erase concepts one at a time")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing outputs.")
    args = parser.parse_args(argv)
    if args.each and not args.erase:
        raise SystemExit("--each erases the --erase concepts one at a time; give --erase.")
    domains = [d.strip() for d in args.domains.split(",")]
    if not set(domains) <= {"object", "style"}:
        raise SystemExit(f"--domains: object and/or style, not {args.domains!r}.")
    if args.erase and len(domains) != 1:
        raise SystemExit("--erase names concepts of one domain; give --domains object or --domains style.")
    paths = args.out / "drift.json", args.out / "drift.md"
    for path in paths:
        check_writable(path, overwrite=args.overwrite)
    result = run(
        args.count,
        args.steps,
        parse_rows(args.rows),
        domains=domains,
        target=args.target,
        keep_other_domain=args.keep_other_domain,
        erase=[n.strip() for n in args.erase.split(",")] if args.erase else (),
        each=args.each,
    )
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
