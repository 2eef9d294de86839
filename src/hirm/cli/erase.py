"""``hirm erase``: erase concepts and save a patch (and optionally the full edited encoders)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from hirm.checks import check_template
from hirm.cli.common import (
    Device,
    Model,
    Overwrite,
    Precision,
    Quiet,
    check_precision,
    console,
    friendly_errors,
    make_config,
    parse_settings,
    resolve_device,
)
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
from hirm.io import check_writable

TARGET_HELP = (
    "Target per concept, in the order of --concept (one value applies to all): 'random' (HiRM-R), "
    "'random:SEED', 'super:WORD' or 'prompt:TEXT' (HiRM-S: the read-out of that prompt), 'empty' (the empty "
    "prompt's read-out), 'file:PATH[:KEY]' (a safetensors vector)."
)


def parse_target(text: str) -> Target:
    kind, _, value = text.partition(":")
    if kind == "random":
        try:
            return RandomTarget(seed=int(value)) if value else RandomTarget()
        except ValueError:
            raise ValueError(f"--target random:SEED takes an integer seed, got {value!r}.") from None
    if kind in ("super", "prompt") and value:
        return PromptTarget(value)
    if text == "empty":  # the guide UCE and ESD erase toward (README, "Many concepts at once")
        return PromptTarget("")
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


def check_outputs(out: Path, save_encoder: Path | None, overwrite: bool) -> None:
    """Both outputs writable, and neither inside the other, before any work."""
    check_writable(out, overwrite=overwrite)
    if save_encoder is None:
        return
    a, b = out.resolve(), save_encoder.resolve()
    if a == b or a.is_relative_to(b) or b.is_relative_to(a):
        raise ValueError(
            f"-o {out} and --save-encoder {save_encoder} overlap; the patch is a file and the encoders a "
            "directory: give two separate paths."
        )
    check_writable(save_encoder, overwrite=overwrite, directory=True)


def method_config(config_cls: type, named: dict[str, Any], settings: list[str]) -> Any:
    """The method's config from the named options that were given and ``--set`` values, every value
    checked against its field's type (one-line errors naming the option)."""
    given = {key: value for key, value in named.items() if value is not None}
    config = make_config(config_cls, given, label="--")
    config = make_config(config_cls, parse_settings(config_cls, settings), base=config, label="--set ")
    if config_cls is HiRMConfig:
        for template in config.templates:
            check_template(template, allowed={"concept"}, required={"concept"}, what="--template")
    return config


def erase_command(
    concept: list[str] = typer.Option(
        [], "--concept", "-c", help="Concept to erase (repeat for several; trained jointly)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Patch file to write (.safetensors)."),
    model: Model = "minicanvas",
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
    trainable: str | None = typer.Option(
        None, help=f"{', '.join(TRAINABLE_SETS)} (default first-attn; see HiRMConfig)."
    ),
    k: int | None = typer.Option(None, help="Number of early blocks for --trainable first-k (default 1)."),
    param: list[str] = typer.Option([], help="Exact parameter names for --trainable params (repeat)."),
    read_layer: int | None = typer.Option(
        None,
        help="Block whose output is read (negative counts from the end; default: the family's, -1 on SD).",
    ),
    read_site: str | None = typer.Option(
        None, help="attn (reference), mlp, hidden or final (default: the family's, attn on SD)."
    ),
    template: list[str] = typer.Option(
        [], help="Prompt template with {concept} (repeat); default: the raw concept."
    ),
    preserve: list[str] = typer.Option([], help="Prompt whose read-out must stay (repeat)."),
    preserve_weight: float | None = typer.Option(
        None, help="Weight of the preservation term (default 0 = reference)."
    ),
    precision: Precision = "auto",
    seed: int | None = typer.Option(None, help="Training seed (default 0)."),
    setting: list[str] = typer.Option(
        [],
        "--set",
        help="Any field of the method's config as KEY=VALUE (JSON, or plain text for text fields), e.g. "
        "--set guide=art --set betas=[0.9,0.99] (repeat).",
    ),
    save_encoder: Path | None = typer.Option(
        None, help="Also write the edited encoder(s) here, one save_pretrained folder per component."
    ),
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Erase concepts from a model's text encoder(s) and write a patch of the changed tensors."""
    from hirm.adapters.loading import load_model
    from hirm.api import check_encoder_patch, erase, save_encoders
    from hirm.core.registry import get_method

    device = str(resolve_device(device))
    check_precision(precision)
    check_outputs(out, save_encoder, overwrite)
    for text in template:
        check_template(text, allowed={"concept"}, required={"concept"}, what="--template")
    concepts = build_concepts(concept, kind, target)
    spec = get_method(method)
    if target and not spec.uses_target:
        raise ValueError(
            f"--target is HiRM's misdirection target; {method} has none (its options: `--set`, see "
            "`hirm info --methods`). Leave --target out."
        )
    read = None
    if read_layer is not None or read_site is not None:
        read = make_config(
            ReadingPoint,
            {k: v for k, v in (("layer", read_layer), ("site", read_site)) if v is not None},
            label="--read-",
        )
    named = {
        "trainable": trainable, "k": k, "params": tuple(param) or None, "read": read, "steps": steps,
        "lr": lr, "templates": tuple(template) or None, "preserve": tuple(preserve) or None,
        "preserve_weight": preserve_weight, "seed": seed,
    }  # fmt: skip
    if precision != "auto":  # auto: the method's default (HiRM: bf16 where native; ESD: fp32)
        named["precision"] = precision
    config = method_config(spec.config_cls, named, setting)
    handle = load_model(model, device=device)
    started = time.perf_counter()
    patch = erase(
        handle, concepts, method=method, config=config, components=component or None, progress=not quiet
    )
    seconds = time.perf_counter() - started
    if save_encoder is not None:
        check_encoder_patch(handle, patch)  # before anything is written
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
        save_encoders(handle, patch, save_encoder, overwrite=overwrite)
        console.print(f"edited encoder(s) -> {save_encoder}/{{{','.join(patch.components)}}}")


def register(app: typer.Typer) -> None:
    app.command("erase")(friendly_errors(erase_command))
