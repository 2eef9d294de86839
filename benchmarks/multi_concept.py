"""Many concepts at once: every multi-concept strategy of ``hirm.core.multi`` as a row of one table.

For each domain (objects, then styles) the first ``--count`` concepts of the domain are erased together
with each strategy (joint training, per-concept patches added, the paper's weight averaging, and ours:
balanced, anchored, balanced-anchored, preserved); the style x object grid is generated once per strategy and
judged. Reported per row: mean UA over the erased concepts, IRA on the domain's other concepts, CRA on the
other domain, each with its number of images n and a 95 % Wilson interval (UA pooled over the erased
concepts' images, which is their mean since each has the same number of images), the erase time, and
whether the goal (UA >= 90 %, IRA >= 90 %, CRA >= 95 %) is met. The original model's row is the reference.

    python benchmarks/multi_concept.py --out results/multi_concept                # the full table (heavy)
    python benchmarks/multi_concept.py --out /tmp/mc --budget tiny --overwrite    # smoke run (minutes)
    python benchmarks/multi_concept.py --out DIR --strategies preserved --keep-other-domain --steps 200
        # preserved-both: keep the domain's other concepts and every concept of the other domain
    python benchmarks/multi_concept.py --out DIR --strategies none --aim
        # only the original model and HiRM-S's aim (no erasure; minutes)
    python benchmarks/multi_concept.py --out DIR --strategies preserved --keep-other-domain --steps 200 --uce
        # also UCE erasing all ten at once (row uce-both) and HiRM + UCE (row preserved-both+uce)
    python benchmarks/multi_concept.py --out DIR --merge DIR_A DIR_B
        # pool runs of one command on disjoint --seeds (e.g. parallel processes on a GPU); generates nothing

``--uce`` adds the peer UCE (``hirm.core.uce``, the original script's recipe, which erases many artists at
once): one closed-form edit of the ten concepts toward the empty prompt, preserving the same concepts a
``preserved`` row keeps (row ``uce``, or ``uce-both`` with ``--keep-other-domain``); and for every HiRM row
``R`` the row ``R+uce``: that HiRM patch and the UCE patch, each made from the original model, applied
together (they change disjoint tensors: the text encoder and the U-Net's cross-attention).
``--uce-tokens last`` runs UCE as the rewritten script does instead (``trainscripts/uce_sd_erase.py``: the
last token only, guide ``art`` for styles and ``''`` for objects, preserve scale 1); its rows are named
``uce-last`` (``uce-last-both``, ``R+uce-last``).

``--aim`` adds the row HiRM-S aims at (``super-category prompt``): no model is edited; each erased concept's
word in the grid prompts is replaced by its super-category (``A animal image in Pastel style.`` for Cats),
which is what a perfect misdirection toward the super-category would make the text encoder say, and the
images are judged against the original labels. Its UA is about what a perfect HiRM-S edit would score on
this world, where a super-category often renders as one of the erased concepts (a reference, not a method).

``--target empty`` misdirects each concept toward the empty prompt's read-out (``PromptTarget("")``), the
guide UCE and ESD erase toward, instead of its super-category: not capped by how the super-category renders.

``--templates partners`` trains each erased concept bare and in frames that each name a concept of the
other domain (``partner_frames``: the world's training templates naming both, never the grid's), toward
the same frame with the target in the concept's place; ``preserved`` keeps the domain's kept concepts in
those frames too and everything else bare. For erased styles whose images lose their objects.

At least two concepts of each domain are always kept for IRA (a domain of n concepts erases at most
n - 2; the JSON records what was asked and what ran). MiniCanvas 2 has 20 of each: erase 10, keep 10. HiRM settings default to the world-tuned ones of ``hirm compare``
(HiRM-S toward each concept's super-category, read at the final output, 100 steps, lr 5e-4).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hirm.evaluation.common import machine_text
from hirm.evaluation.metrics import wilson_interval

GOAL = {"UA": 0.90, "IRA": 0.90, "CRA": 0.95}
METRICS = ("UA", "IRA", "CRA")
#: CRA split by the image's concept of the erased domain: one of the erased concepts (how the other domain
#: fares where the erasure acts, e.g. objects in the erased styles' images) or one of the kept ones.
CRA_SPLIT = ("CRA_erased", "CRA_kept")
#: The row of ``--aim``: each erased concept written as its super-category (no model is edited).
AIM_ROW = "super-category prompt"
#: ``--aim``'s row per ``--target``: the prompt a perfect misdirection would make the text encoder read.
AIM_ROWS = {"super": AIM_ROW, "empty": "concept word left out"}
#: ``--templates partners``: frames per erased concept naming one concept of the other domain each.
PARTNER_FRAMES = 4
#: Cheap settings for a smoke run: two concepts, two HiRM steps, one seed, two sampler steps.
TINY = {"count": 2, "hirm_steps": 2, "seeds": (188,), "sampler_steps": 2}


def _same(a: str | None, b: str | None) -> bool:
    from hirm.evaluation.common import concept_key

    return a is not None and b is not None and concept_key(a) == concept_key(b)


def grid_metrics(rows: Sequence[Mapping[str, Any]], erased: Sequence[str], domain: str) -> dict[str, Any]:
    """UA (pooled over the erased concepts' images, and per concept), IRA and CRA with n and intervals.

    ``rows``: judged grid images (``style``, ``object``, ``pred_style``, ``pred_object``), as
    :meth:`hirm.evaluation.canvas.CanvasEvaluator.judge_items` returns them.
    """
    other = "object" if domain == "style" else "style"
    counts = {m: [0, 0] for m in (*METRICS, *CRA_SPLIT)}  # [hits, n]; UA counts misses
    per_concept = {name: [0, 0] for name in erased}
    for row in rows:
        label, predicted = row[domain], row[f"pred_{domain}"]
        hit = _same(label, predicted)
        target = next((name for name in erased if _same(label, name)), None)
        if target is not None:
            counts["UA"][0] += not hit
            counts["UA"][1] += 1
            per_concept[target][0] += not hit
            per_concept[target][1] += 1
        elif label is not None:
            counts["IRA"][0] += hit
            counts["IRA"][1] += 1
        if row[other] is not None:
            kept = _same(row[other], row[f"pred_{other}"])
            for metric in ("CRA", "CRA_erased" if target is not None else "CRA_kept"):
                counts[metric][0] += kept
                counts[metric][1] += 1
    out: dict[str, Any] = {}
    for metric, (hits, n) in counts.items():
        out[metric] = {"value": hits / n if n else None, "n": n, "ci95": wilson_interval(hits, n)}
    out["UA_per_concept"] = {name: (h / n if n else None) for name, (h, n) in per_concept.items()}
    out["meets_goal"] = all(out[m]["value"] is not None and out[m]["value"] >= GOAL[m] for m in METRICS)
    return out


def erased_concepts(canvas, domain: str, count: int) -> tuple[list[str], str | None]:
    """The first ``count`` concepts of ``domain``, keeping at least two for IRA; and a note if reduced."""
    names = list(canvas.names(domain))
    usable = max(1, len(names) - 2)
    if count <= usable:
        return names[:count], None
    return names[
        :usable
    ], f"{count} requested, {usable} erased: the canvas has {len(names)} {domain}s and IRA needs 2"


def concepts_for(canvas, names: Sequence[str], domain: str, target: str):
    """``Concept`` objects: HiRM-S toward the super-category (``super``), toward the empty prompt's read-out
    (``empty``: the guide UCE and ESD erase toward; ours), or HiRM-R (``random`` at the reference scale,
    ``random-rms`` at the read-out's RMS); as the comparison's entries
    (:func:`hirm.evaluation.compare.world_target`)."""
    from hirm.core.config import Concept
    from hirm.evaluation.common import display_name
    from hirm.evaluation.compare import world_target

    return [
        Concept(display_name(n), kind=domain, target=world_target(canvas, n, domain, target)) for n in names
    ]


def keep_sentences(canvas, kept: Sequence[str], domain: str, per_concept: int = 2) -> list[str]:
    """Sentences pairing every concept of the other domain with ``per_concept`` kept concepts of ``domain``
    (the kept ones in turn, so each is used equally often), in the world's training templates naming both,
    never the grid's (:func:`hirm.evaluation.compare.pair_sentences`).

    ``--keep-sentences``: the ``preserved`` strategy keeps these besides the bare names, since keeping a
    bare name does not keep the sentences that pair it with another kept concept."""
    from hirm.evaluation.common import display_name
    from hirm.evaluation.compare import pair_sentences

    other = "style" if domain == "object" else "object"
    names = [display_name(n) for n in canvas.names(other)]
    return list(pair_sentences(names, other, [display_name(n) for n in kept], per_name=per_concept))


def partner_frames(canvas, domain: str, count: int = PARTNER_FRAMES) -> tuple[str, ...]:
    """``{concept}`` frames of ``domain`` that each name one concept of the other domain: ``count`` of the
    world's training templates naming both domains (never the grid's; :func:`hirm.evaluation.compare.
    pair_sentences`), with partners spread over the other domain's list, e.g. ``"Dogs in {concept} style"``.

    ``--templates partners``: each erased concept is trained bare and in these frames toward the same frame
    with the target in its place (``--target empty``: the concept's word left out, what the aim row
    renders), and the domain's kept concepts are kept in them; the other domain's kept concepts (and
    ``--keep-sentences``) stay bare, since the frames have no place for them."""
    from hirm.evaluation.common import display_name
    from hirm.evaluation.compare import pair_sentences

    other = [display_name(n) for n in canvas.names("style" if domain == "object" else "object")]
    spread = [other[k * len(other) // count] for k in range(count)]
    return pair_sentences(("{concept}",), domain, spread, per_name=count)


def aim_items(
    canvas, items: Sequence[Any], erased: Sequence[str], domain: str, target: str = "super"
) -> list[Any]:
    """``items`` with every erased concept of ``domain`` written as its super-category in the prompt
    (``target="super"``) or left out of it (``"empty"``); the labels stay the concept's, so the judges
    score the images as prompts for the concept."""
    field = "{" + domain + "}"
    written = "{" + domain + "_super}" if target == "super" else ""
    out = []
    for item in items:
        if item.label(domain) in erased:
            template = item.template.replace(field, written)
            prompt = canvas.prompt(template, style=item.style, object=item.object)
            item = replace(item, prompt=prompt)
        out.append(item)
    return out


def run_table(
    model: str = "minicanvas",
    *,
    domains: Sequence[str] = ("object", "style"),
    count: int = 10,
    strategies: Sequence[str] | None = None,
    config=None,
    target: str = "super",
    settings=None,
    canvas=None,
    judges=None,
    device: str = "cpu",
    cache_dir: str | None = None,
    progress: bool = True,
    keep_other_domain: bool = False,
    aim: bool = False,
    uce: bool = False,
    uce_tokens: str = "paper",
    preserve_weight: float | None = None,
    sentences: bool = False,
    partners: int = 0,
) -> dict[str, Any]:
    """Every (domain, strategy) row; see the module docstring. Returns the JSON-ready result.

    ``keep_other_domain``: ``preserved`` also keeps every concept of the other domain (its row is then
    named ``preserved-both``), so its CRA, like its IRA, is measured on concepts it was told to keep.
    ``aim``: add the row of HiRM-S's aim (``super-category prompt``; see the module docstring).
    ``uce``: add UCE on all the concepts at once and every HiRM row combined with it (module docstring);
    ``uce_tokens``: its token mode (``paper`` = the original script, ``last`` = the rewritten one).
    ``preserve_weight``: weight of the preserve term the preserved / anchored strategies add (default:
    ``hirm.core.config.DEFAULT_PRESERVE_WEIGHT``, 1).
    ``sentences``: ``preserved`` also keeps :func:`keep_sentences` (needs ``keep_other_domain``).
    ``partners``: train in ``"{concept}"`` and that many :func:`partner_frames` of each domain (``config``
    must have no templates of its own); ``preserved`` keeps the domain's kept concepts in them and the rest
    bare."""
    import torch

    from hirm.adapters.loading import load_model
    from hirm.api import erase
    from hirm.core.config import DEFAULT_PRESERVE_WEIGHT, HiRMConfig
    from hirm.core.multi import STRATEGIES, erase_many
    from hirm.core.patch import merge_patches
    from hirm.core.uce import UCEConfig
    from hirm.evaluation.canvas import (
        CanvasEvaluator,
        CanvasSettings,
        default_canvas_and_judges,
        make_cache,
        open_model,
        patched,
    )
    from hirm.evaluation.canvas_grid import build_items
    from hirm.evaluation.common import display_name, run_metadata
    from hirm.evaluation.compare import WORLD_TUNED_HIRM

    strategies = list(STRATEGIES if strategies is None else strategies)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise SystemExit(f"Unknown strategies {unknown}; choose from {list(STRATEGIES)}.")
    if aim and target not in AIM_ROWS:
        raise SystemExit(
            f"--aim needs --target super or empty (a random direction has no prompt), not {target}."
        )
    anchor = DEFAULT_PRESERVE_WEIGHT if preserve_weight is None else preserve_weight
    if not anchor > 0:
        raise SystemExit(f"--preserve-weight must be > 0 (default {DEFAULT_PRESERVE_WEIGHT}), not {anchor}.")
    if sentences and not keep_other_domain:
        raise SystemExit(
            "--keep-sentences pairs the kept concepts with the other domain's; add --keep-other-domain."
        )
    if partners and config is not None and config.templates:
        raise SystemExit("--templates partners replaces the HiRM templates; give no other templates.")
    dev = torch.device(device)
    canvas, judges = default_canvas_and_judges(model, canvas, judges, dev)
    if settings is None:
        settings = CanvasSettings.for_world() if str(model) == "minicanvas" else CanvasSettings()
    config = config or HiRMConfig(**WORLD_TUNED_HIRM)
    pipe, path = open_model(model, dev)
    evaluator = CanvasEvaluator(
        pipe, canvas=canvas, judges=judges, settings=settings, cache=make_cache(cache_dir, path, True),
        progress=progress,
    )  # fmt: skip
    items = build_items(canvas, templates=settings.templates, seeds=settings.seeds)
    handle = load_model(model, device=dev)
    original_rows, _ = evaluator.judge_items(items, cache=evaluator.cache, desc="original")

    def judge(row: str, patches: list, erase_s: float, names: list[str], domain: str) -> dict[str, Any]:
        """The grid generated with ``patches`` applied, judged: one row of the table."""
        with patched(pipe, patches):
            judged, _ = evaluator.judge_items(items, cache=None, desc=f"{domain}/{row}")
        return {**grid_metrics(judged, names, domain), "erase_s": erase_s}

    result: dict[str, Any] = {
        "meta": run_metadata(
            model=str(model), model_path=path, settings=settings.to_dict(), seeds=settings.seeds
        ),
        "hirm_config": config.to_dict(),
        "target": target,
        "keep_other_domain": keep_other_domain,
        "preserve_weight": anchor,
        "keep_sentences": sentences,
        "partner_frames": partners,
        "uce_tokens": uce_tokens if uce else None,
        "goal": GOAL,
        "machine": machine_text(),
        "domains": {},
    }
    for domain in domains:
        names, note = erased_concepts(canvas, domain, count)
        concepts = concepts_for(canvas, names, domain, target)
        rows = {"original": {**grid_metrics(original_rows, names, domain), "erase_s": 0.0}}
        if aim:
            # the unchanged prompts are the original's images (cache); only the rewritten ones are generated
            judged, _ = evaluator.judge_items(
                aim_items(canvas, items, names, domain, target), cache=evaluator.cache, desc=f"{domain}/aim"
            )
            rows[AIM_ROWS[target]] = {**grid_metrics(judged, names, domain), "erase_s": 0.0}
        kept = [n for n in canvas.names(domain) if n not in names]
        other_domain = "style" if domain == "object" else "object"
        other = list(canvas.names(other_domain)) if keep_other_domain else []
        # ``preserved`` (and UCE) keep the domain's other concepts (the IRA ones), as UCE's script keeps the
        # other artists; with keep_other_domain the other domain's concepts (the CRA ones) as well
        kept_texts = [display_name(n) for n in (*kept, *other)]
        if sentences:
            kept_texts += keep_sentences(canvas, kept, domain)
        domain_config, framed, bare = config, kept_texts, []
        if partners:
            # the frames have a place for this domain's concepts only: the rest is kept bare (UCE's
            # preserve set stays kept_texts)
            frames = ("{concept}", *partner_frames(canvas, domain, partners))
            domain_config = replace(config, templates=frames)
            framed, bare = kept_texts[: len(kept)], kept_texts[len(kept) :]

        made = {}
        for strategy in strategies:
            keep = framed if strategy == "preserved" else []
            row = "preserved-both" if strategy == "preserved" and keep_other_domain else strategy
            run_config = domain_config
            if strategy == "preserved" and bare:
                run_config = replace(
                    domain_config,
                    preserve=(*domain_config.preserve, *bare),
                    preserve_weight=domain_config.preserve_weight or anchor,
                )
            start = time.perf_counter()
            patch = erase_many(
                handle,
                concepts,
                run_config,
                strategy=strategy,
                keep=keep,
                anchor_weight=anchor,
                progress=False,
            )
            made[row] = (patch, time.perf_counter() - start)
            rows[row] = judge(row, [patch], made[row][1], names, domain)
        if uce:
            peer = "uce" if uce_tokens == "paper" else f"uce-{uce_tokens}"
            row = f"{peer}-both" if keep_other_domain else peer
            uce_config = UCEConfig(tokens=uce_tokens, preserve=tuple(kept_texts))
            start = time.perf_counter()
            uce_patch = erase(handle, concepts, method="uce", config=uce_config, progress=False)
            uce_s = time.perf_counter() - start
            rows[row] = judge(row, [uce_patch], uce_s, names, domain)
            for name, (patch, erase_s) in made.items():
                both = merge_patches([patch, uce_patch])
                rows[f"{name}+{peer}"] = judge(f"{name}+{peer}", [both], erase_s + uce_s, names, domain)
        result["domains"][domain] = {
            "erased": names,
            "kept": kept,
            **({"templates": list(domain_config.templates)} if partners else {}),
            "requested": count,
            "note": note,
            "rows": rows,
        }
    return result


#: What every table pooled by :func:`merge_tables` must share (everything but the sampling seeds).
SAME_FOR_MERGE = (
    "hirm_config",
    "target",
    "keep_other_domain",
    "preserve_weight",
    "keep_sentences",
    "partner_frames",
    "uce_tokens",
    "goal",
)
#: What a table written before the setting was recorded ran with.
RECORD_DEFAULTS = {"preserve_weight": 1.0, "keep_sentences": False, "partner_frames": 0}


def merge_tables(tables: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pool tables of the same rows run on disjoint sampling seeds (e.g. in parallel processes): per row
    and metric the hits and n are added, intervals recomputed; per-concept UA weighted by its images.

    Refuses (one-line ``SystemExit``) tables that differ in anything but the seeds and the machine, that
    share a seed, or whose domains erase other concepts or have other rows."""
    if len(tables) < 2:
        raise SystemExit("--merge needs at least two result directories.")
    first = tables[0]
    for table in tables[1:]:
        for key in SAME_FOR_MERGE:
            if table.get(key, RECORD_DEFAULTS.get(key)) != first.get(key, RECORD_DEFAULTS.get(key)):
                raise SystemExit(f"Cannot merge: the tables differ in {key}; merge only runs of one command.")
        settings = [{k: v for k, v in t["meta"]["settings"].items() if k != "seeds"} for t in (first, table)]
        if settings[0] != settings[1]:
            raise SystemExit("Cannot merge: the tables were sampled with different settings.")
    domains: dict[str, list[Mapping[str, Any]]] = {}
    domain_seeds: dict[str, list[int]] = {}
    for table in tables:
        for domain, block in table["domains"].items():
            domains.setdefault(domain, []).append(block)
            domain_seeds.setdefault(domain, []).extend(table["meta"]["seeds"])
    for domain, seeds in domain_seeds.items():
        if len(set(seeds)) != len(seeds):
            raise SystemExit(
                f"Cannot merge: a seed appears in two {domain} tables ({seeds}); the images would count twice."
            )
    merged_domains = {}
    for domain, blocks in domains.items():
        for block in blocks[1:]:
            if (block["erased"], block.get("kept"), list(block["rows"])) != (
                blocks[0]["erased"], blocks[0].get("kept"), list(blocks[0]["rows"])
            ):  # fmt: skip
                raise SystemExit(
                    f"Cannot merge: the {domain} tables erase other concepts or have other rows."
                )
        rows = {
            name: _pool([b["rows"][name] for b in blocks], blocks[0]["erased"]) for name in blocks[0]["rows"]
        }
        merged_domains[domain] = {**blocks[0], "rows": rows, "seeds": domain_seeds[domain]}
    return {
        **{key: first.get(key) for key in SAME_FOR_MERGE},
        "meta": {
            **first["meta"],
            "seeds": sorted({seed for seeds in domain_seeds.values() for seed in seeds}),
            "merged": [t["meta"] for t in tables],
        },
        "machine": sorted({t["machine"] for t in tables}),
        "domains": merged_domains,
    }


def _pool(rows: Sequence[Mapping[str, Any]], erased: Sequence[str]) -> dict[str, Any]:
    """One row pooled over runs on disjoint seeds (see :func:`merge_tables`)."""
    out: dict[str, Any] = {}
    # tables written before the split was recorded have none: the pooled row then has none either
    split = tuple(m for m in CRA_SPLIT if all(m in row for row in rows))
    for metric in (*METRICS, *split):
        n = sum(row[metric]["n"] for row in rows)
        hits = sum(round(row[metric]["value"] * row[metric]["n"]) for row in rows if row[metric]["n"])
        out[metric] = {"value": hits / n if n else None, "n": n, "ci95": wilson_interval(hits, n)}
    # every erased concept has the same number of grid images in a run: UA's n split evenly
    sizes = [row["UA"]["n"] // len(erased) for row in rows]
    out["UA_per_concept"] = {
        name: sum(row["UA_per_concept"][name] * size for row, size in zip(rows, sizes, strict=True))
        / sum(sizes)
        for name in erased
    }
    out["meets_goal"] = all(out[m]["value"] is not None and out[m]["value"] >= GOAL[m] for m in METRICS)
    out["erase_s"] = sum(row["erase_s"] for row in rows) / len(rows)  # mean over runs (machines may differ)
    return out


def _cell(metric: Mapping[str, Any]) -> str:
    if metric["value"] is None:
        return "–"
    lo, hi = metric["ci95"]
    return f"{100 * metric['value']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={metric['n']})"


def _provenance(result: Mapping[str, Any]) -> str:
    """Seeds and machine(s) of a table; for a merged one, how many runs it pools."""
    machines = result.get("machine")
    machines = ", ".join(machines) if isinstance(machines, list) else machines
    seeds = ", ".join(map(str, result["meta"]["seeds"]))
    runs = result["meta"].get("merged")
    pooled = f" Pooled from {len(runs)} runs (`--merge`) on disjoint seeds." if runs else ""
    return f"Sampling seeds {seeds}; machine: {machines}.{pooled}"


def to_markdown(result: Mapping[str, Any], command: str = "") -> str:
    """One table: a row per (domain, strategy), UA / IRA / CRA in % with 95 % intervals and n."""
    lines = ["# Many concepts at once", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [
        f"HiRM settings: {result['hirm_config']}; target: {result['target']}; weight of the strategies' "
        f"preserve term: {result.get('preserve_weight', 1.0)}"
        f"{'; preserved also keeps sentences pairing kept concepts (--keep-sentences)' if result.get('keep_sentences') else ''}"
        f"{'; trained bare and in frames naming the other domain (--templates partners)' if result.get('partner_frames') else ''}"
        ". Goal: UA >= 90 %, IRA >= 90 %, "
        "CRA >= 95 %. Values in %, [95 % Wilson interval], n images.",
        "",
        _provenance(result),
        "",
        "| domain | strategy | UA (mean over erased) | IRA (rest of domain) | CRA (other domain) | erase s | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for domain, block in result["domains"].items():
        for name, row in block["rows"].items():
            cells = " | ".join(_cell(row[m]) for m in METRICS)
            goal = "yes" if row["meets_goal"] else "no"
            lines.append(f"| {domain} | {name} | {cells} | {row['erase_s']:.1f} | {goal} |")
    lines.append("")
    split = [(d, name, row) for d, b in result["domains"].items() for name, row in b["rows"].items()
             if all(m in row for m in CRA_SPLIT)]  # fmt: skip
    if split:
        lines += [
            "CRA split by the image's concept of the erased domain: one of the erased concepts (the other "
            "domain where the erasure acts) or one of the kept ones.",
            "",
            "| domain | strategy | CRA on the erased concepts' images | CRA on the kept concepts' images |",
            "|---|---|---|---|",
            *(
                f"| {d} | {name} | {_cell(row['CRA_erased'])} | {_cell(row['CRA_kept'])} |"
                for d, name, row in split
            ),
            "",
        ]
    for domain, block in result["domains"].items():
        kept = block.get("kept")
        lines.append(
            f"- {domain}s erased ({len(block['erased'])}): {', '.join(block['erased'])}"
            + (f"; kept ({len(kept)}): {', '.join(kept)}" if kept else "")
            + (f". Note: {block['note']}." if block["note"] else "")
        )
    if any("preserved" in block["rows"] for block in result["domains"].values()):
        lines.append(
            "- `preserved` trains with the kept concepts of the domain as its preserve set (as UCE's original "
            "script keeps the other artists), so its IRA is measured on concepts it was told to keep."
        )
    if any(row.startswith("uce") for block in result["domains"].values() for row in block["rows"]):
        lines.append(
            "- `uce` / `uce-both`: UCE (the original script's recipe) erases the concepts at once toward the empty "
            "prompt (`uce-last`: the rewritten script's last-token edit), preserving what the `preserved` / "
            "`preserved-both` row keeps; `R+uce`: HiRM row R's patch "
            "and the UCE patch, each made from the original model, applied together."
        )
    if any(AIM_ROWS["empty"] in block["rows"] for block in result["domains"].values()):
        lines.append(
            f"- `{AIM_ROWS['empty']}` edits no model: each erased concept's word is left out of the grid prompts "
            "(what `--target empty` misdirects toward), judged against the concept's label."
        )
    if any(AIM_ROW in block["rows"] for block in result["domains"].values()):
        lines.append(
            f"- `{AIM_ROW}` edits no model: each erased concept's word in the grid prompts is replaced by its "
            "super-category (what HiRM-S misdirects toward), judged against the concept's label; its UA is "
            "about what a perfect HiRM-S edit would score on this world."
        )
    if any("preserved-both" in block["rows"] for block in result["domains"].values()):
        lines.append(
            "- `preserved-both` also keeps every concept of the other domain (`--keep-other-domain`), so its "
            "CRA too is measured on concepts it was told to keep."
        )
    return "\n".join(lines) + "\n"


def _strategies(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if text.strip() == "none":
        return []
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Directory for multi_concept.json / .md.")
    parser.add_argument("--model", default="minicanvas", help="Only the embedded world ships its judges.")
    parser.add_argument("--domains", default="object,style", help="Comma-separated, in order.")
    parser.add_argument("--count", type=int, default=10, help="Concepts erased per domain (two always kept).")
    parser.add_argument(
        "--strategies", default=None, help="Comma-separated (default: all; none = only the reference rows)."
    )
    parser.add_argument(
        "--uce",
        action="store_true",
        help="add UCE erasing all the concepts at once, and every HiRM row combined with it",
    )
    parser.add_argument(
        "--uce-tokens",
        choices=("paper", "last"),
        default="paper",
        help="UCE's rows: the original script (paper) or the rewritten one (last)",
    )
    parser.add_argument(
        "--aim",
        action="store_true",
        help="add the row HiRM-S aims at: erased concepts written as their super-category, no edit",
    )
    parser.add_argument(
        "--target",
        choices=("super", "empty", "random", "random-rms"),
        default="super",
        help="super-category (HiRM-S), the empty prompt's read-out (ours), or a random direction (HiRM-R)",
    )
    parser.add_argument(
        "--keep-other-domain",
        action="store_true",
        help="strategy preserved also keeps the other domain's concepts (row preserved-both)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="HiRM steps (default 100, the world-tuned value)."
    )
    parser.add_argument("--lr", type=float, default=None, help="HiRM learning rate (default 5e-4).")
    parser.add_argument(
        "--templates",
        choices=("none", "context", "partners"),
        default="none",
        help="train each concept bare (none), in hirm.core.multi.CONTEXT_TEMPLATES (context), or bare and in "
        f"{PARTNER_FRAMES} of the world's training templates naming the other domain (partners)",
    )
    parser.add_argument(
        "--preserve-weight",
        type=float,
        default=None,
        help="weight of the preserve term of the preserved / anchored strategies (default 1)",
    )
    parser.add_argument(
        "--keep-sentences",
        action="store_true",
        help="preserved-both also keeps sentences pairing each concept of the other domain with two kept ones",
    )
    parser.add_argument(
        "--seeds", default=None, help="Comma-separated sampling seeds (default: the world's)."
    )
    parser.add_argument("--budget", choices=("full", "tiny"), default="full", help="tiny = a smoke run.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=None, help="Image cache of the original model's grid.")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing outputs.")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="DIR",
        help="pool these result directories (same command on disjoint --seeds) into --out; generates nothing",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import shlex
    import sys

    from hirm.evaluation.common import dump_json
    from hirm.io import (
        OutputExistsError,
        check_writable,
        read_json,
        read_marker,
        write_atomic,
        write_marker,
    )

    args = parse_args(argv)
    if args.uce_tokens != "paper" and not args.uce:
        raise SystemExit("--uce-tokens sets UCE's rows; add --uce.")
    json_path, md_path = args.out / "multi_concept.json", args.out / "multi_concept.md"
    try:
        for path in (json_path, md_path):
            check_writable(path, overwrite=args.overwrite)
    except OutputExistsError as err:
        raise SystemExit(f"error: {err}") from None
    if args.merge:
        tables = []
        for directory in args.merge:
            path = directory / "multi_concept.json"
            if not path.is_file():
                raise SystemExit(f"No {path}; give directories written by this script.")
            try:
                tables.append(read_json(path, "a multi_concept table"))
            except ValueError as err:
                raise SystemExit(f"error: {err}") from None
        result = merge_tables(tables)
    else:
        result = _run(args)
    command = " ".join(
        ["python benchmarks/multi_concept.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]
    )
    result["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(
        json_path, lambda tmp: tmp.write_text(dump_json(result), encoding="utf-8"), overwrite=args.overwrite
    )
    write_atomic(
        md_path,
        lambda tmp: tmp.write_text(to_markdown(result, command), encoding="utf-8"),
        overwrite=args.overwrite,
    )
    # record the two files as this script's, so that --overwrite may replace them (and nothing else)
    marker = read_marker(args.out)
    listed = set(marker["files"]) if marker else set()
    write_marker(args.out, "multi-concept", files=sorted(listed | {json_path.name, md_path.name}))
    print(to_markdown(result, command))
    return result


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """The table ``args`` asks for, generated and judged (see :func:`run_table`)."""
    from hirm.core.config import HiRMConfig
    from hirm.evaluation.canvas import CanvasSettings
    from hirm.evaluation.compare import WORLD_TUNED_HIRM

    tiny = args.budget == "tiny"
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None}
    if tiny:
        overrides.setdefault("steps", TINY["hirm_steps"])
    if args.templates == "context":
        from hirm.core.multi import CONTEXT_TEMPLATES

        overrides["templates"] = CONTEXT_TEMPLATES
    config = replace(HiRMConfig(**WORLD_TUNED_HIRM), **overrides)
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else (TINY["seeds"] if tiny else None)
    settings = CanvasSettings.for_world() if args.model == "minicanvas" else CanvasSettings()
    settings = replace(
        settings,
        **{
            k: v
            for k, v in (("seeds", seeds), ("num_inference_steps", TINY["sampler_steps"] if tiny else None))
            if v is not None
        },
    )
    return run_table(
        args.model,
        domains=args.domains.split(","),
        count=TINY["count"] if tiny else args.count,
        strategies=_strategies(args.strategies),
        config=config,
        target=args.target,
        settings=settings,
        device=args.device,
        cache_dir=args.cache_dir,
        keep_other_domain=args.keep_other_domain,
        aim=args.aim,
        uce=args.uce,
        uce_tokens=args.uce_tokens,
        preserve_weight=args.preserve_weight,
        sentences=args.keep_sentences,
        partners=PARTNER_FRAMES if args.templates == "partners" else 0,
    )


if __name__ == "__main__":
    main()
