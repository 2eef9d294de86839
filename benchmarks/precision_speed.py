"""Sampling speed of the world's pipeline in fp32 and under bf16 autocast, side by side in one run.

    python benchmarks/precision_speed.py                         # 16 images per batch, 3 rounds
    python benchmarks/precision_speed.py --json results/precision_speed.json

bf16 autocast is only fast where the hardware has native bf16 (CPUs with AMX / AVX-512-BF16, CUDA
sm80+); elsewhere PyTorch emulates it. ``precision="auto"`` (the CLI's ``--precision auto``) picks bf16
only where :func:`hirm.checks.native_bf16` says so. The two precisions alternate round by round on the
same prompts and seeds (``hirm.evaluation.generation.generate_batch``, the path every evaluation uses),
so a slower neighbour process slows both alike; the printed ratio is of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="images per batch (the evaluations' default)")
    parser.add_argument("--rounds", type=int, default=3, help="timed batches per precision")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args()


def main() -> None:
    import torch

    import hirm
    from hirm.checks import native_bf16
    from hirm.evaluation.common import machine_text, now_iso
    from hirm.evaluation.generation import Request, generate_batch
    from hirm.io import check_writable_or_exit, write_atomic
    from hirm.world import GENERATION_DEFAULTS, OBJECTS, STYLES

    args = parse_args()
    if args.json:  # before the minutes of timing, not after them
        check_writable_or_exit(args.json, overwrite=True)
    device = torch.device(args.device)
    pipe = hirm.load_model("minicanvas", device=device).pipeline()
    pipe.set_progress_bar_config(disable=True)
    pairs = [(s, o) for s in STYLES for o in OBJECTS][: args.batch]
    steps = GENERATION_DEFAULTS["num_inference_steps"]
    sampler = dict(
        guidance_scale=GENERATION_DEFAULTS["guidance_scale"], num_inference_steps=steps,
        height=GENERATION_DEFAULTS["height"], width=GENERATION_DEFAULTS["width"],
    )  # fmt: skip

    def requests(precision: str) -> list[Request]:
        return [
            Request(f"A {o} image in {s.replace('_', ' ')} style.", 188, precision=precision, **sampler)
            for s, o in pairs
        ]

    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)  # the emulated-bf16 warning: this is its measurement
    generate_batch(pipe, requests("fp32"))  # warm-up (allocations, kernel selection)
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for precision in seconds:
            start = time.perf_counter()
            generate_batch(pipe, requests(precision))
            seconds[precision].append(time.perf_counter() - start)
    median = {p: statistics.median(v) for p, v in seconds.items()}
    result = {
        "date": now_iso(),
        "machine": machine_text(),
        "native_bf16": native_bf16(device),
        "device": str(device),
        "batch": args.batch,
        "steps": steps,
        "rounds": args.rounds,
        "seconds": seconds,
        "median_seconds": median,
        "images_per_second": {p: args.batch / m for p, m in median.items()},
        "bf16_over_fp32": median["bf16"] / median["fp32"],
    }
    for p in seconds:
        print(
            f"{p}: median {median[p]:.1f} s per batch of {args.batch} ({args.batch / median[p]:.2f} images/s; "
            f"n={args.rounds}, range {min(seconds[p]):.1f}-{max(seconds[p]):.1f} s)"
        )
    print(f"bf16 / fp32 time: {result['bf16_over_fp32']:.2f}x on {result['machine']}")
    if args.json:
        text = json.dumps(result, indent=1) + "\n"
        write_atomic(args.json, lambda tmp: tmp.write_text(text), overwrite=True)


if __name__ == "__main__":
    main()
