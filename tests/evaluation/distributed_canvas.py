"""Helper of test_distributed.py: one canvas evaluation on a tiny pipeline, launched with 1 or N processes.

Usage: python distributed_canvas.py MODEL_DIR PATCH OUT_JSON   (or under ``accelerate launch``)
"""

from __future__ import annotations

import json
import sys

import torch


def main(model: str, patch: str, out: str) -> None:
    from hirm.evaluation.canvas import CanvasSettings, evaluate_canvas
    from hirm.evaluation.canvas_grid import Canvas
    from hirm.evaluation.generation import distributed_state
    from hirm.evaluation.judges import FunctionJudge

    torch.set_num_threads(1)

    def judge(classes, channels):
        return FunctionJudge(
            classes,
            lambda x: torch.stack([x.mean(dim=(2, 3))[:, c] for c in channels], 1).mul(50).softmax(-1),
        )

    canvas = Canvas(
        ("Van_Gogh", "Crayon"),
        ("Cats", "Dogs"),
        {"Van_Gogh": "painting", "Crayon": "drawing"},
        {"Cats": "animal", "Dogs": "animal"},
    )
    judges = {"style": judge(("Van Gogh", "Crayon"), (0, 1)), "object": judge(("Cats", "Dogs"), (2, 1))}
    settings = CanvasSettings(
        heldout_templates=("{object}, {style}",),
        seeds=(1, 2, 3),
        num_inference_steps=2,
        guidance_scale=3.0,
        batch_size=3,
    )
    result = evaluate_canvas(
        model,
        target="Cats",
        patches=[patch],
        canvas=canvas,
        judges=judges,
        settings=settings,
        device="cpu",
        use_cache=False,
        progress=False,
    )
    state = distributed_state()
    if state.is_main_process:
        with open(out, "w") as handle:
            json.dump(
                {
                    "processes": state.num_processes,
                    "summary": result["summary"],
                    "rows": result["rows"],
                    "timing": result["timing"],
                },
                handle,
            )


if __name__ == "__main__":
    main(*sys.argv[1:4])
