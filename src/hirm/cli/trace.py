"""``hirm trace``: causal tracing of a concept through a CLIP text encoder (where is it kept?)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from hirm.cli.common import MODEL_HELP, Device, Overwrite, friendly_errors, resolve_device


def trace_command(
    concept: str = typer.Option(
        ..., "--concept", "-c", help="The concept word(s), as written in the prompts."
    ),
    prompts: list[str] = typer.Option(
        None,
        "--prompt",
        help="Prompts containing the concept (repeatable). Default: 'A photo of {concept}.' "
        "and five other plain templates.",
    ),
    model: str = typer.Option("minicanvas", "--model", "-m", help=MODEL_HELP),
    component: str | None = typer.Option(
        None, "--component", help="Which CLIP text encoder to trace (default: the model's first one)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for trace.json and trace.png (created)."),
    overwrite: Overwrite = False,
    noise: float = typer.Option(
        3.0, "--noise", help="Noise on the concept's embeddings, in std of the table."
    ),
    samples: int = typer.Option(4, "--samples", help="Noise draws per prompt."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
    device: Device = "auto",
) -> None:
    """Corrupt the concept's token embeddings, restore one block's output at one position, and map how
    much of the clean conditioning comes back (DiffQuickFix / LocoGen causal tracing). Writes a
    block x position heat-map (PNG) and the scores (JSON)."""
    import torch

    from hirm.adapters.loading import load_model
    from hirm.evaluation.fidelity import trace_concept, trace_heatmap
    from hirm.io import atomic_path, check_writable

    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}.")
    if not noise > 0:
        raise ValueError(f"--noise must be > 0, got {noise}.")
    prompts = list(prompts or [t.format(concept=concept) for t in DEFAULT_TEMPLATES])
    check_writable(out, overwrite=overwrite, directory=True)  # before any model is loaded
    handle = load_model(model, device=resolve_device(device), dtype=torch.float32)
    component = handle.selected_encoders([component] if component else None)[0]
    encoder, tokenizer = handle.text_encoder(component).eval(), handle.tokenizer(component)
    result = trace_concept(
        encoder, tokenizer, prompts, concept, noise_scale=noise, samples=samples, seed=seed
    )
    payload = {
        "model": str(model),
        "component": component,
        "concept": concept,
        "prompts": prompts,
        "noise_std": result.noise,
        "samples": samples,
        "seed": seed,
        "layers": int(result.scores.shape[0]),
        "positions": result.positions,
        "scores": result.scores.round(4).tolist(),
    }
    with atomic_path(out, overwrite=overwrite, directory=True, kind="trace") as tmp:
        (tmp / "trace.json").write_text(json.dumps(payload, indent=2) + "\n")
        trace_heatmap(result, title=f"{concept} ({component})").save(tmp / "trace.png")
    table = Table("block", *result.positions, title=f"restored share of the clean output: {concept}")
    for layer, row in enumerate(result.scores):
        table.add_row(str(layer), *[f"{v:.2f}" for v in row])
    Console().print(table)
    Console().print(f"wrote {out / 'trace.json'} and {out / 'trace.png'}")


DEFAULT_TEMPLATES = (
    "A photo of {concept}.",
    "An image of {concept}.",
    "A picture of {concept}.",
    "{concept}",
    "A painting of {concept}.",
    "A drawing of {concept}.",
)


def register(app: typer.Typer) -> None:
    app.command("trace")(friendly_errors(trace_command))
