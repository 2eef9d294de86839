"""``hirm erase``: erase concepts and save a patch (and optionally the full edited encoders)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import typer

from hirm.cli.common import MODEL_HELP, console, friendly_errors
from hirm.core.config import (
    NUDITY_PROMPT,
    TRAINABLE_SETS,
    Concept,
    HiRMConfig,
    PromptTarget,
    RandomTarget,
    ReadingPoint,
    Target,
    VectorTarget,
)

TARGET_HELP = (
    "Target per concept, in the order of --concept (one value applies to all): 'random' (HiRM-R), "
    "'random:SEED', 'super:WORD' or 'prompt:TEXT' (HiRM-S: the read-out of that prompt), 'file:PATH[:KEY]' "
    "(a safetensors vector)."
)


def parse_target(text: str) -> Target:
    kind, _, value = text.partition(":")
    if kind == "random":
        return RandomTarget(seed=int(value)) if value else RandomTarget()
    if kind in ("super", "prompt") and value:
        return PromptTarget(value)
    if kind == "file" and value:
        path, _, key = value.partition(":")
        return VectorTarget(path, key or "target")
    raise ValueError(f"Cannot read target {text!r}. {TARGET_HELP}")


def build_concepts(texts: list[str], kind: str, targets: list[str]) -> list[Concept]:
    if kind == "nudity" and not texts:
        texts = [NUDITY_PROMPT]
    if not texts:
        raise ValueError("Give at least one --concept.")
    if len(targets) not in (0, 1, len(texts)):
        raise ValueError(
            f"{len(targets)} --target values for {len(texts)} concepts; give one or one per concept."
        )
    parsed = [parse_target(t) for t in targets] or [RandomTarget()]
    parsed = parsed * len(texts) if len(parsed) == 1 else parsed
    return [Concept(text=t, kind=kind, target=target) for t, target in zip(texts, parsed)]


def read_point(layer: int | None, site: str | None) -> ReadingPoint | None:
    """``--read-layer`` / ``--read-site``; neither = the model family's default reading point."""
    if layer is None and site is None:
        return None
    return ReadingPoint(-1 if layer is None else layer, site or "attn")


def parse_setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes KEY=VALUE, got {text!r}.")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value  # a bare string


def override(config, values: dict):
    """``dataclasses.replace`` with a clear error for unknown fields; lists become tuples."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{type(config).__name__} has no field(s) {unknown}; it has {sorted(known)}.")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return dataclasses.replace(config, **values) if values else config


def erase_command(
    concept: list[str] = typer.Option(
        [], "--concept", "-c", help="Concept to erase (repeat for several; trained jointly)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Patch file to write (.safetensors)."),
    model: str = typer.Option("minicanvas", "--model", "-m", help=MODEL_HELP),
    kind: str = typer.Option(
        "object", help="Concept kind: style, object or nudity (picks reference lr and steps)."
    ),
    target: list[str] = typer.Option([], "--target", "-t", help=TARGET_HELP),
    method: str = typer.Option("hirm", help="Erasure method (see `hirm info --methods`)."),
    component: list[str] = typer.Option(
        [], help="Text encoder(s) to edit, e.g. text_encoder_2 (default: all CLIP encoders)."
    ),
    steps: int | None = typer.Option(None, help="Optimizer steps (default: reference value for the kind)."),
    lr: float | None = typer.Option(None, help="Learning rate (default: 5e-5 style/object, 1e-4 nudity)."),
    trainable: str = typer.Option("first-attn", help=f"{', '.join(TRAINABLE_SETS)} (see HiRMConfig)."),
    k: int = typer.Option(1, help="Number of early blocks for --trainable first-k."),
    param: list[str] = typer.Option([], help="Exact parameter names for --trainable params (repeat)."),
    read_layer: int | None = typer.Option(
        None,
        help="Block whose output is read (negative counts from the end; default: the family's, -1 on SD).",
    ),
    read_site: str | None = typer.Option(None, help="attn (reference), mlp, hidden or final (default attn)."),
    template: list[str] = typer.Option(
        [], help="Prompt template with {concept} (repeat); default: the raw concept."
    ),
    preserve: list[str] = typer.Option([], help="Prompt whose read-out must stay (repeat)."),
    preserve_weight: float = typer.Option(0.0, help="Weight of the preservation term (0 = reference)."),
    precision: str = typer.Option("auto", help="auto, fp32 or bf16 (autocast; weights stay fp32)."),
    seed: int | None = typer.Option(None, help="Training seed (default 0)."),
    setting: list[str] = typer.Option(
        [],
        "--set",
        help="Any field of the method's config as KEY=VALUE (JSON value), e.g. --set guide='\"art\"' (repeat).",
    ),
    save_encoder: Path | None = typer.Option(
        None, help="Also write the full edited encoder(s) here (save_pretrained)."
    ),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Erase concepts from a model's text encoder(s) and write a patch of the changed tensors."""
    from hirm.adapters.loading import load_model
    from hirm.api import erase, save_encoders
    from hirm.core.registry import get_method
    from hirm.io import check_writable

    check_writable(out, overwrite=overwrite)
    if save_encoder is not None:
        check_writable(save_encoder, overwrite=overwrite)
    concepts = build_concepts(concept, kind, target)
    spec = get_method(method)
    if spec.config_cls is HiRMConfig:
        config = HiRMConfig(
            trainable=trainable, k=k, params=tuple(param), read=read_point(read_layer, read_site),
            steps=steps, lr=lr, templates=tuple(template), preserve=tuple(preserve),
            preserve_weight=preserve_weight, precision=precision, seed=seed or 0,
        )  # fmt: skip
    else:
        given = {"steps": steps, "lr": lr, "seed": seed}
        config = override(spec.config_cls(), {k: v for k, v in given.items() if v is not None})
    config = override(config, dict(parse_setting(s) for s in setting))
    handle = load_model(model, device=device)
    started = time.perf_counter()
    patch = erase(
        handle, concepts, method=method, config=config, components=component or None, progress=not quiet
    )
    seconds = time.perf_counter() - started
    patch.save(out, overwrite=overwrite)
    losses = patch.metadata.get("final_loss", {})
    console.print(
        f"[green]erased[/] {[c.text for c in concepts]} with {patch.metadata['method']} in {seconds:.1f}s: "
        f"{patch.num_parameters:,} parameters in {len(patch.tensors)} tensors of {list(patch.components)}"
        + (f"; final loss {', '.join(f'{c} {v:.4g}' for c, v in losses.items())}" if losses else "")
    )
    if handle.family.untouched:
        console.print(f"left unchanged: {list(handle.family.untouched)} (T5 encoders are not CLIP)")
    console.print(f"patch -> {out}")
    if save_encoder is not None:
        if not set(patch.components) <= set(handle.family.encoders):
            raise ValueError(
                f"--save-encoder writes text encoders; this patch changes {list(patch.components)}. Use `hirm apply`."
            )
        save_encoders(handle, patch, save_encoder, overwrite=overwrite)
        console.print(f"edited encoder(s) -> {save_encoder}")


def register(app: typer.Typer) -> None:
    app.command("erase")(friendly_errors(erase_command))
