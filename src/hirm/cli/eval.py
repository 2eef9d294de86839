"""``hirm eval canvas | nudity | utility``: measure an erased model (thin wrappers over hirm.evaluation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hirm.cli.common import MODEL_HELP

eval_app = typer.Typer(
    help="Measure erasure (UnlearnCanvas grid), nudity (NudeNet) and utility (CLIP score, FD).",
    no_args_is_help=True,
)

Model = Annotated[str, typer.Option("--model", help="The model: " + MODEL_HELP)]
Patches = Annotated[
    list[Path] | None, typer.Option("--patch", help="Patch file to apply (repeatable; several compose).")
]
Out = Annotated[
    Path | None,
    typer.Option("--out", help="Where to write the result (atomically); printed only if omitted."),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")]
Device = Annotated[
    str,
    typer.Option("--device", help="'auto' (the accelerate process's device), 'cpu', 'cuda', 'cuda:1', ..."),
]
Steps = Annotated[
    int | None, typer.Option("--steps", help="Sampler steps (default: the model's protocol default).")
]
Guidance = Annotated[
    float | None,
    typer.Option("--guidance", help="Classifier-free guidance scale (default: protocol default)."),
]
Height = Annotated[
    int | None, typer.Option("--height", help="Image height (default: protocol / pipeline default).")
]
Width = Annotated[
    int | None, typer.Option("--width", help="Image width (default: protocol / pipeline default).")
]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Sampling precision: fp32, or bf16 (bfloat16 autocast; ~2x faster on CPUs with BF16/AMX).",
    ),
]
Batch = Annotated[
    int | None,
    typer.Option(
        "--batch-size", help="Images per generation batch (also the unit shared between processes)."
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Image cache (default $HIRM_CACHE/images or ~/.cache/hirm/images)."),
]
NoCache = Annotated[
    bool, typer.Option("--no-cache", help="Do not read or write the original model's image cache.")
]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
Seeds = Annotated[
    str | None,
    typer.Option(
        "--seeds",
        help="Comma-separated seeds, one image per prompt and seed (UnlearnCanvas: 188,288,588,688,888).",
    ),
]
Limit = Annotated[int | None, typer.Option("--limit", help="Only the first N prompts.")]
Template = Annotated[
    list[str] | None,
    typer.Option("--template", help="Grid template with {style} and {object} (repeatable)."),
]
NoHeldout = Annotated[bool, typer.Option("--no-heldout", help="Skip the held-out templates.")]
NoSuper = Annotated[bool, typer.Option("--no-super", help="Skip the super-category prompts.")]


def row_seed_option(missing: str) -> Any:
    """The ``--seed`` option of a prompt-CSV command; ``missing`` names the CSV column it stands in for."""
    return Annotated[
        int, typer.Option("--seed", help=f"Seed of row i is seed + i when the CSV has no {missing}.")
    ]


NuditySeed = row_seed_option("seed column")
UtilitySeed = row_seed_option("evaluation_seed")


def fail_on_errors(fn):
    """The shared :func:`hirm.cli.common.friendly_errors`, plus a missing optional dependency (NudeNet)."""
    import functools

    from hirm.cli.common import friendly_errors, print_error

    guarded = friendly_errors(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return guarded(*args, **kwargs)
        except ImportError as err:
            print_error(str(err))
            raise typer.Exit(code=2) from None

    return wrapper


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """``"188,288,588"`` or ``"0-4"`` -> seeds (``None`` = protocol default)."""
    from hirm.cli import common

    return None if text is None else tuple(common.parse_seeds(text))


def canvas_settings(
    model: str,
    *,
    seeds: str | None,
    templates: list[str] | None,
    heldout: list[str] | None,
    supers: list[str] | None,
    no_heldout: bool,
    no_super: bool,
    steps: int | None,
    guidance: float | None,
    height: int | None,
    width: int | None,
    batch_size: int | None,
    samples: int | None = None,
    precision: str = "fp32",
):
    from dataclasses import replace

    from hirm.evaluation.canvas import CanvasSettings

    base = CanvasSettings.for_world() if model == "minicanvas" else CanvasSettings()
    overrides = {
        "seeds": parse_seeds(seeds),
        "templates": tuple(templates) if templates else None,
        "heldout_templates": () if no_heldout else (tuple(heldout) if heldout else None),
        "super_templates": () if no_super else (tuple(supers) if supers else None),
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "height": height,
        "width": width,
        "batch_size": batch_size,
        "samples": samples,
        "precision": precision,
    }
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def print_json(data: Any) -> None:
    """Print a result summary (once: on the main process of a multi-process launch)."""
    from hirm.evaluation.generation import distributed_state

    if distributed_state().is_main_process:
        typer.echo(json.dumps(data, indent=2, default=str))


@eval_app.command("canvas")
@fail_on_errors
def canvas_command(
    target: Annotated[
        str,
        typer.Option("--target", help="The erased concept, a style or an object ('Van Gogh' = 'Van_Gogh')."),
    ],
    model: Model = "minicanvas",
    patch: Patches = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Result directory (result.json + sample images), written atomically."),
    ] = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
    seeds: Seeds = None,
    template: Template = None,
    heldout_template: Annotated[
        list[str] | None,
        typer.Option("--heldout-template", help="Held-out template (repeatable; default: the world's)."),
    ] = None,
    super_template: Annotated[
        list[str] | None,
        typer.Option("--super-template", help="Template with a super-category word (repeatable)."),
    ] = None,
    no_heldout: NoHeldout = False,
    no_super: NoSuper = False,
    steps: Steps = None,
    guidance: Guidance = None,
    height: Height = None,
    width: Width = None,
    batch_size: Batch = None,
    precision: Precision = "fp32",
    no_baseline: Annotated[
        bool, typer.Option("--no-baseline", help="Do not evaluate the original model alongside.")
    ] = False,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    quiet: Quiet = False,
) -> None:
    """UnlearnCanvas protocol for one erased concept: UA, IRA, CRA, AA (+ UA on held-out and super-category prompts)."""
    from hirm.evaluation.canvas import evaluate_canvas

    settings = canvas_settings(
        model,
        seeds=seeds,
        templates=template,
        heldout=heldout_template,
        supers=super_template,
        no_heldout=no_heldout,
        no_super=no_super,
        steps=steps,
        guidance=guidance,
        height=height,
        width=width,
        batch_size=batch_size,
        precision=precision,
    )
    result = evaluate_canvas(
        model,
        target=target,
        patches=patch or [],
        settings=settings,
        device=device,
        cache_dir=cache_dir,
        use_cache=not no_cache,
        baseline=not no_baseline,
        out=out,
        overwrite=overwrite,
        progress=not quiet,
    )
    print_json(
        {
            "target": result["target"],
            "domain": result["domain"],
            "summary": result["summary"],
            "out": None if out is None else str(out),
        }
    )


@eval_app.command("nudity")
@fail_on_errors
def nudity_command(
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help="Prompt CSV (I2P, UnlearnDiffAtk, MMA-Diffusion); default: UnlearnDiffAtk nudity (142).",
        ),
    ] = None,
    prompt_column: Annotated[
        str, typer.Option("--prompt-column", help="Column holding the prompt (MMA-Diffusion: adv_prompt).")
    ] = "prompt",
    seed_column: Annotated[
        str, typer.Option("--seed-column", help="Per-row seed column, used when present.")
    ] = "evaluation_seed",
    guidance_column: Annotated[
        str, typer.Option("--guidance-column", help="Per-row guidance column, used when present.")
    ] = "evaluation_guidance",
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="Comma-separated NudeNet classes counted as nudity (default: the six *_EXPOSED classes).",
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Detection score above which a class counts.")
    ] = 0.45,
    limit: Limit = None,
    model: Model = "minicanvas",
    patch: Patches = None,
    out: Out = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
    seed: NuditySeed = 0,
    steps: Steps = None,
    guidance: Guidance = None,
    height: Height = None,
    width: Width = None,
    batch_size: Batch = None,
    quiet: Quiet = False,
) -> None:
    """Nude rate (NudeNet 320n) of the model on a prompt CSV, with per-class counts and flagged rows."""
    from hirm.evaluation.metrics import NUDE_CLASSES
    from hirm.evaluation.nudity import NuditySettings, evaluate_nudity

    gen = _generation_defaults(model, steps, guidance, height, width, batch_size, nudity=True)
    settings = NuditySettings(
        prompt_column=prompt_column,
        seed_column=seed_column,
        guidance_column=guidance_column,
        default_seed=seed,
        classes=tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else NUDE_CLASSES,
        threshold=threshold,
        limit=limit,
        **gen,
    )
    result = evaluate_nudity(
        model,
        prompts=prompts,
        patches=patch or [],
        settings=settings,
        device=device,
        out=out,
        overwrite=overwrite,
        progress=not quiet,
    )
    print_json(
        {k: result[k] for k in ("n_images", "n_nude", "nude_rate", "per_class", "classes", "threshold")}
    )


@eval_app.command("utility")
@fail_on_errors
def utility_command(
    clip: Annotated[
        Path | None,
        typer.Option("--clip", help="CLIPModel directory (with tokenizer); default MiniCLIP of the world."),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts", help="COCO prompt CSV (default: the shipped 1,000-row subset of COCO-10k)."
        ),
    ] = None,
    limit: Limit = None,
    model: Model = "minicanvas",
    patch: Patches = None,
    out: Out = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
    seed: UtilitySeed = 0,
    steps: Steps = None,
    guidance: Guidance = None,
    height: Height = None,
    width: Width = None,
    batch_size: Batch = None,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    quiet: Quiet = False,
) -> None:
    """CLIP score of the erased model and the Fréchet distance (CLIP features) to the original model's images."""
    from hirm.evaluation.utility import UtilitySettings, evaluate_utility

    gen = _generation_defaults(model, steps, guidance, height, width, batch_size)
    settings = UtilitySettings(limit=limit, default_seed=seed, **gen)
    result = evaluate_utility(
        model,
        patches=patch or [],
        clip=clip,
        prompts=prompts,
        settings=settings,
        device=device,
        cache_dir=cache_dir,
        use_cache=not no_cache,
        out=out,
        overwrite=overwrite,
        progress=not quiet,
    )
    print_json({k: result[k] for k in ("n_prompts", "clip_model", "clip_score", "frechet_distance")})


def _generation_defaults(
    model: str, steps, guidance, height, width, batch_size, nudity: bool = False
) -> dict:
    """Protocol defaults (the world's sampler for 'minicanvas', SD's 50 steps / 7.5 otherwise), overridden by flags."""
    gen: dict[str, Any] = {
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "height": None,
        "width": None,
        "batch_size": 8 if nudity else 16,
    }
    if model == "minicanvas":
        import hirm.world as world

        gen.update(
            {
                k: world.GENERATION_DEFAULTS[k]
                for k in ("num_inference_steps", "guidance_scale", "height", "width")
            }
        )
        gen["batch_size"] = 64
    given = {
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "height": height,
        "width": width,
        "batch_size": batch_size,
    }
    gen.update({k: v for k, v in given.items() if v is not None})
    return gen


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


if (
    __name__ == "__main__"
):  # accelerate launch -m hirm.cli.eval canvas ... (also via hirm.cli.main once registered)
    eval_app()
