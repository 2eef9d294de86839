"""Attack speed on the miniature world: UnlearnDiffAtk one prompt at a time vs the prompts of a chunk
searched together, side by side in one run.

One erased concept (world-tuned HiRM-S, as in ``benchmarks/attacks.py``), the first ``--limit`` grid
prompts naming it, the attack's CPU-budget defaults. Two variants of the same search:

  one-at-a-time  sampler batch size 1: every prompt's search, and the images judged after each loss
                 timestep, run alone (what the attack did before it searched chunks).
  batched        the world sampler's batch size (32): the unfinished prompts of a chunk share each
                 U-Net forward/backward and each judged generation.

Each prompt keeps its own token distribution, random stream and stopping point in both, so the two
find the same attack up to floating-point order (the printout says how many prompts agree). Rounds
alternate the variants (``--repeats``) and the median seconds per prompt are reported, with the ratio.

    python benchmarks/attack_speed.py --concept Cats --limit 8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hirm.evaluation.common import machine_text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--concept",
        default="Cats",
        help="world concept erased and attacked (one the erasure removes: a prompt recognised before the attack is not searched)",
    )
    parser.add_argument("--limit", type=int, default=8, help="attacked prompts per variant")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the two variants")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import hirm
    from hirm.attacks import Sampler, canvas_target, run_attack
    from hirm.evaluation.canvas_grid import Canvas
    from hirm.evaluation.compare import WORLD_TUNED_HIRM, Entry, make_erase

    device = torch.device("cpu")
    canvas = Canvas.from_world()
    concept = canvas.canonical(args.concept)
    handle = hirm.load_model("minicanvas", device=device)
    pipe = handle.pipeline()
    entry = Entry("hirm-s", ("hirm",), target="super", overrides={"hirm": WORLD_TUNED_HIRM})
    patch = make_erase(entry, canvas, device)(handle, concept, canvas.domain(concept))
    target = canvas_target(canvas, concept, seeds=(188, 288))
    variants = {
        "one-at-a-time": Sampler.for_model("minicanvas", batch_size=1),
        "batched": Sampler.for_model("minicanvas"),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    results = {}
    for _ in range(args.repeats):
        for name, sampler in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                results[name] = run_attack(
                    "unlearndiffatk", "minicanvas", target, out=Path(tmp) / name, patches=[patch],
                    sampler=sampler, limit=args.limit, pipe=pipe, progress=False,
                )  # fmt: skip
                seconds[name].append((time.perf_counter() - start) / args.limit)
    agree = sum(
        a["attacked_prompt"] == b["attacked_prompt"] and a["success"] == b["success"]
        for a, b in zip(results["one-at-a-time"]["items"], results["batched"]["items"], strict=True)
    )
    median = {name: statistics.median(values) for name, values in seconds.items()}
    machine = machine_text()
    report = {
        "concept": concept,
        "prompts": args.limit,
        "repeats": args.repeats,
        "seconds_per_prompt": median,
        "all_seconds_per_prompt": seconds,
        "speedup": median["one-at-a-time"] / median["batched"],
        "same_attack": f"{agree} of {args.limit}",
        "asr": {name: r["asr"]["rate"] for name, r in results.items()},
        "machine": machine,
    }
    for name in variants:
        print(f"{name:>14}: {median[name]:.2f} s per prompt (ASR {report['asr'][name]})")
    print(
        f"speed-up {report['speedup']:.2f}x; same found prompt and verdict for {report['same_attack']} prompts"
    )
    print(f"{args.limit} prompts of {concept}, {args.repeats} round(s); {machine}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
