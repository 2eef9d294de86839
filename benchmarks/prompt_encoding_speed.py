"""Sampling with each distinct prompt encoded once against the pipeline encoding every image's prompt,
side by side in one run on the world's pipeline.

    python benchmarks/prompt_encoding_speed.py                       # 32 prompts x 2 seeds, 3 rounds
    python benchmarks/prompt_encoding_speed.py --json results/prompt_encoding_speed.json

An evaluation batch holds each grid prompt once per seed and the same empty negative prompt for every
image; ``hirm.evaluation.generation.generate_batch`` encodes each distinct one once on SD 1.x/2.x
pipelines. The two ways alternate round by round on the same requests (the evaluations' batch of 64,
the world's sampler settings, ``--precision``), so a slower neighbour process slows both alike; the
printed ratio is of the medians. It also prints how far the two ways' images differ (uint8 levels):
the text encoder sees a smaller batch, so rows may differ by float rounding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32, help="distinct grid prompts per batch")
    parser.add_argument(
        "--seeds", default="188,288", help="comma-separated seeds (each prompt once per seed)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed batches per way")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args()


def main() -> None:
    import numpy as np
    import torch

    import hirm
    import hirm.evaluation.generation as generation
    from hirm.cli.common import sampling_precision
    from hirm.evaluation.common import machine_text, now_iso
    from hirm.evaluation.generation import Request, generate_batch
    from hirm.io import check_writable_or_exit, write_atomic
    from hirm.world import GENERATION_DEFAULTS, OBJECTS, STYLES

    args = parse_args()
    if args.json:  # before the minutes of timing, not after them
        check_writable_or_exit(args.json, overwrite=True)
    device = torch.device(args.device)
    precision = sampling_precision(args.precision, device)  # what the CLI's --precision does
    pipe = hirm.load_model("minicanvas", device=device).pipeline()
    pipe.set_progress_bar_config(disable=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    pairs = [(s, o) for s in STYLES for o in OBJECTS][: args.prompts]
    sampler = dict(
        guidance_scale=GENERATION_DEFAULTS["guidance_scale"],
        num_inference_steps=GENERATION_DEFAULTS["num_inference_steps"],
        height=GENERATION_DEFAULTS["height"], width=GENERATION_DEFAULTS["width"],
    )  # fmt: skip
    # the grid's order: every seed of a prompt next to each other
    requests = [
        Request(f"A {o} image in {s.replace('_', ' ')} style.", seed, precision=precision, **sampler)
        for s, o in pairs
        for seed in seeds
    ]
    distinct = generation._distinct_prompt_embeds

    def per_image(pipe, kwargs):  # the pipeline encodes every image's prompt and negative prompt
        return {}

    ways = {"per image": per_image, "distinct": distinct}
    generate_batch(pipe, requests)  # warm-up (allocations, kernel selection)
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    images = {}
    try:
        for _ in range(args.rounds):
            for way, fn in ways.items():
                generation._distinct_prompt_embeds = fn
                start = time.perf_counter()
                images[way] = generate_batch(pipe, requests)
                seconds[way].append(time.perf_counter() - start)
    finally:
        generation._distinct_prompt_embeds = distinct
    diff = np.abs(images["per image"].astype(int) - images["distinct"].astype(int))
    median = {w: statistics.median(v) for w, v in seconds.items()}
    n = len(requests)
    result = {
        "date": now_iso(),
        "machine": machine_text(),
        "device": str(device),
        "precision": precision,
        "batch": n,
        "distinct_prompts": len(pairs),
        "rounds": args.rounds,
        "seconds": seconds,
        "median_seconds": median,
        "images_per_second": {w: n / m for w, m in median.items()},
        "per_image_over_distinct": median["per image"] / median["distinct"],
        "max_uint8_difference": int(diff.max()),
        "images_differing": int((diff.reshape(n, -1).max(axis=1) > 0).sum()),
    }
    for w in ways:
        print(
            f"{w}: median {median[w]:.2f} s per batch of {n} ({n / median[w]:.2f} images/s; "
            f"n={args.rounds}, range {min(seconds[w]):.2f}-{max(seconds[w]):.2f} s)"
        )
    print(
        f"per-image / distinct time: {result['per_image_over_distinct']:.2f}x ({precision}) on {result['machine']}; "
        f"images differ in {result['images_differing']} of {n}, by at most {result['max_uint8_difference']} "
        "uint8 levels"
    )
    if args.json:
        text = json.dumps(result, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: tmp.write_text(text), overwrite=True)


if __name__ == "__main__":
    main()
