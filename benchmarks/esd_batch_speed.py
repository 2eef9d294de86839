"""ESD on many world concepts: one at a time (``hirm.core.esd.erase``) against one batched run
(``hirm.core.esd_batched.erase_each``), side by side in one process.

    python benchmarks/esd_batch_speed.py                                   # 8 styles, esd-x and esd-u, 10 steps
    python benchmarks/esd_batch_speed.py --json results/esd_batch_speed.json

Both erase the same concepts with the same config (seed included), so each concept draws the same
``t_enc`` and latents in both and they do the same sampling work; the rounds alternate the two, so a
slower neighbour process slows both alike. Prints seconds per ESD step (all concepts), the ratio of the
medians, and how far each batched patch's edit is from its sequential run's (relative norm of the
difference of the changes; float noise only, see ``tests/test_esd_batched.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concepts", type=int, default=8, help="the first N styles of the world")
    parser.add_argument("--variants", default="esd-x,esd-u", help="comma-separated: esd-x, esd-u")
    parser.add_argument("--steps", type=int, default=10, help="ESD steps per run (the paper's is 1000)")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each way")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args()


def main() -> None:
    import torch

    import hirm
    from hirm.core.config import Concept
    from hirm.core.esd import ESDConfig
    from hirm.core.esd import erase as esd_erase
    from hirm.core.esd_batched import erase_each
    from hirm.core.patch import component_parameters
    from hirm.evaluation.common import machine_text, now_iso
    from hirm.io import check_writable_or_exit, write_atomic
    from hirm.world import STYLES, display_name

    args = parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in ("esd-x", "esd-u")]
    if bad or not variants:
        raise SystemExit(f"error: --variants takes esd-x and/or esd-u, not {args.variants!r}.")
    if not 1 <= args.concepts <= len(STYLES) or args.steps < 1 or args.rounds < 1:
        raise SystemExit(f"error: give 1-{len(STYLES)} concepts and at least one step and round.")
    if args.json:  # before the minutes of timing, not after them
        check_writable_or_exit(args.json, overwrite=True)
    device = torch.device(args.device)
    handle = hirm.load_model("minicanvas", device=device, dtype=torch.float32)
    concepts = [Concept(display_name(s), kind="style") for s in STYLES[: args.concepts]]
    originals = component_parameters(handle.component("unet"))

    def edit(patch) -> torch.Tensor:
        return torch.cat(
            [(v - originals[k.split("/", 1)[1]].detach()).flatten() for k, v in sorted(patch.tensors.items())]
        )

    figures = []
    for variant in variants:
        config = ESDConfig(variant=variant, steps=args.steps)
        times: dict[str, list[float]] = {"sequential": [], "batched": []}
        for _ in range(args.rounds):
            start = time.perf_counter()
            alone = [esd_erase(handle, [c], config, progress=False) for c in concepts]
            times["sequential"].append(time.perf_counter() - start)
            start = time.perf_counter()
            together = erase_each(handle, concepts, config, progress=False)
            times["batched"].append(time.perf_counter() - start)
        errors = [float((edit(b) - edit(a)).norm() / edit(a).norm()) for a, b in zip(alone, together)]
        medians = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "variant": variant,
            "concepts": len(concepts),
            "steps": args.steps,
            "rounds": args.rounds,
            "seconds": times,
            "seconds_per_step_median": {k: v / args.steps for k, v in medians.items()},
            "speedup": medians["sequential"] / medians["batched"],
            "edit_relative_difference_max": max(errors),
        }
        figures.append(row)
        print(
            f"{variant}: {len(concepts)} concepts x {args.steps} steps: one at a time "
            f"{medians['sequential'] / args.steps:.2f} s/step, batched {medians['batched'] / args.steps:.2f} s/step "
            f"(medians of {args.rounds}; {times}) -> {row['speedup']:.2f}x; "
            f"edits differ by at most {max(errors):.1e} (relative norm)",
            flush=True,
        )
    result = {
        "benchmark": "esd_batch_speed",
        "date": now_iso(),
        "machine": machine_text(),
        "figures": figures,
    }
    print(f"machine: {result['machine']}")
    if args.json:
        write_atomic(
            args.json, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"), overwrite=True
        )


if __name__ == "__main__":
    main()
