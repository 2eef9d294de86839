"""Full miniature-world sweep: every style and every object erased with HiRM, each judged on the whole grid.

Prints the time split (erase / generate / judge, plus the one-off generation of the original model's
grid) and the mean ± std of UA, IRA, CRA, AA over concepts.

    python benchmarks/sweep_speed.py                       # the full benchmark (every concept of the world, 2 seeds)
    python benchmarks/sweep_speed.py --limit 2 --seeds 188 # smoke run
    accelerate launch --num_processes 2 benchmarks/sweep_speed.py        # several GPUs
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/sweep_speed.py --precision bf16
                                                           # the 2-core CPU: one single-threaded process per core

On the 2-core CPU two single-threaded processes sampled faster than one process with two threads (a
scratch timing of the world's U-Net on the 2-core AMD EPYC: about 0.9 against 1.24 ms per sample); the
images are the same either way (fixed chunks, per-image seeds).

The goal (MiniCanvas 2 issue): every concept of the world erased in turn and judged on the full grid
with >= 2 seeds in <= 45 min on the 2-core CPU, bf16 sampling allowed; the benchmark prints how many
images it generated and judged.

The image cache starts empty (a temporary directory) unless --cache-dir is given, so the original
model's generation is part of the measurement.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="Only the first N concepts (styles first).")
    parser.add_argument("--seeds", default="188,288", help="Comma-separated seeds (>= 2 for the goal).")
    parser.add_argument("--method", default="hirm", help="Erasure method (default config).")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    parser.add_argument("--batch-size", type=int, default=None, help="Images per generation batch.")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="Sampling precision (bf16 = autocast)."
    )
    parser.add_argument("--steps", type=int, default=None, help="Sampler steps (default: the world's).")
    parser.add_argument("--no-heldout", action="store_true", help="Skip held-out and super-category prompts.")
    parser.add_argument("--out", type=Path, default=None, help="Sweep directory (default: a temporary one).")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="Image cache (default: a fresh temporary one)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the timings and aggregates here.")
    return parser.parse_args()


def image_counts(out: Path, concepts: list[str], settings) -> dict[str, int]:
    """Images the sweep generated and judged: the original model's full item list once, and each
    concept's items (read back from its ``result.json``)."""
    from hirm.evaluation.canvas_grid import Canvas, build_items

    original = build_items(
        Canvas.from_world(),
        templates=settings.templates,
        heldout_templates=settings.heldout_templates,
        super_templates=settings.super_templates,
        seeds=settings.seeds,
        target=None,
    )
    erased = 0
    for name in concepts:
        result = json.loads((out / "concepts" / name / "result.json").read_text(encoding="utf-8"))
        erased += len(result["rows"]["erased"])
    return {"original": len(original), "erased": erased}


def main() -> None:
    from dataclasses import replace

    import torch

    from hirm.evaluation.canvas import CanvasSettings
    from hirm.evaluation.common import machine_text
    from hirm.evaluation.generation import distributed_state
    from hirm.evaluation.sweep import read_sweep, run_sweep
    from hirm.io import write_atomic

    args = parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    overrides = {"seeds": seeds, "precision": args.precision}
    if args.steps:
        overrides["num_inference_steps"] = args.steps
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.no_heldout:
        overrides.update(heldout_templates=(), super_templates=())
    settings = replace(CanvasSettings.for_world(), **overrides)
    state = distributed_state()
    with tempfile.TemporaryDirectory(prefix="hirm-sweep-speed-") as tmp:
        out = args.out or Path(tmp) / "sweep"
        cache = args.cache_dir or Path(tmp) / "cache"
        start = time.perf_counter()
        manifest = run_sweep(
            "minicanvas",
            out=out,
            domain="all",
            method=args.method,
            limit=args.limit,
            settings=settings,
            device=None if args.device == "auto" else args.device,
            cache_dir=cache,
            overwrite=args.out is None,
            progress=state.is_main_process,
        )
        wall = time.perf_counter() - start
        if not state.is_main_process:
            return
        _, records = read_sweep(out)
        images = image_counts(out, [r["concept"] for r in records], settings)
    times = manifest["times"]
    n = len(records)
    print(
        f"\nMiniCanvas sweep: {n} concepts, seeds {list(seeds)}, method {args.method}, "
        f"{state.num_processes} process(es), device {state.device}, torch {torch.__version__}, "
        f"{settings.num_inference_steps} sampler steps, precision {settings.precision}"
    )
    print(f"{'phase':<28}{'total s':>10}{'per concept s':>16}")
    print(f"{'original grid (once)':<28}{times['original'] or 0:>10.2f}{'':>16}")
    for phase in ("erase", "generate", "judge"):
        print(f"{phase:<28}{times[phase]:>10.2f}{times[phase] / max(n, 1):>16.3f}")
    print(f"{'wall clock (incl. loading)':<28}{wall:>10.2f}")
    if state.num_processes > 1:
        print(
            f"(generate and judge: seconds summed over the {state.num_processes} processes; "
            "the original grid and erase: wall clock)"
        )
    print(f"images generated and judged: {images['original']} original + {images['erased']} erased")
    if args.limit is None and len(seeds) >= 2:
        verdict = "met" if wall <= 45 * 60 else "missed"
        print(f"goal (full sweep, >= 2 seeds, <= 45 min on the 2-core CPU): {verdict}")
    print("\nmean ± std over concepts (%):")
    for domain, stats in manifest["aggregate"].items():
        cells = "  ".join(
            f"{m} {100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
            for m, s in stats.items()
            if isinstance(s, dict) and s["mean"] is not None
        )
        print(f"  {domain:<7} (n={stats['n_concepts']}): {cells}")
    if args.json:
        text = json.dumps(
            {
                "times": times,
                "wall_s": wall,
                "concepts": n,
                "seeds": list(seeds),
                "processes": state.num_processes,
                "settings": settings.to_dict(),
                "aggregate": manifest["aggregate"],
                "images": images,
                "machine": machine_text(),
            },
            indent=2,
        )
        write_atomic(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)


if __name__ == "__main__":
    main()
