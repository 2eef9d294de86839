"""``hirm attack``: try to bring an erased concept back (thin wrapper over :func:`hirm.attacks.run_attack`)."""

from __future__ import annotations

from pathlib import Path

import typer

from hirm.cli.common import Device, Model, Patches, Quiet, SamplerSteps, console, friendly_errors

#: The config field that ``--steps`` sets, per attack.
STEP_FIELDS = {"embedding": "steps", "unlearndiffatk": "iterations", "ringabell": "generations"}

ATTACK_HELP = (
    "embedding (learned word embedding, textual inversion), unlearndiffatk (discrete prompt search), "
    "ringabell (concept-vector prompts) or prompts (a prompt CSV such as UnlearnDiffAtk nudity, MMA-Diffusion, I2P)."
)


def nudity_judge(judge: str, *, reference: bool, nudity: bool):
    """NudeNet for ``--judge nudenet`` (or any nudity target under ``--reference``): the six-class judge
    of ``hirm eval nudity``, or with ``--reference`` UnlearnDiffAtk's nine classes, so that ASR compares
    with their published numbers. ``None`` = the attack's default judge."""
    from hirm.attacks import NudityJudge
    from hirm.evaluation.metrics import NUDE_CLASSES, UNLEARNDIFFATK_NUDE_CLASSES

    if judge == "nudenet" or (reference and nudity):
        return NudityJudge(classes=UNLEARNDIFFATK_NUDE_CLASSES if reference else NUDE_CLASSES)
    return None


def build_config(
    attack: str, *, reference: bool, steps: int | None, settings: list[str], kind: str | None = None
):
    """The attack's config: CPU-budget defaults (or the authors' with ``reference``), then ``--steps`` and ``--set``."""
    from hirm.attacks import get_attack
    from hirm.cli.common import make_config, parse_settings

    spec = get_attack(attack)
    config = spec.config_cls.reference(kind=kind) if reference else spec.config_cls()
    if steps is not None:
        if attack not in STEP_FIELDS:
            raise ValueError(f"--steps does not apply to the {attack!r} attack (it has no optimisation).")
        config = make_config(spec.config_cls, {STEP_FIELDS[attack]: steps}, base=config, label="--")
    return make_config(
        spec.config_cls, parse_settings(spec.config_cls, settings), base=config, label="--set "
    )


def attack_command(
    attack: str = typer.Argument(..., help=ATTACK_HELP),
    concept: str = typer.Option(
        "", "--concept", "-c", help="The erased concept (a world style/object, or e.g. nudity)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (re-run the same command to resume)."),
    patch: Patches = None,
    model: Model = "minicanvas",
    kind: str | None = typer.Option(None, help="style, object or nudity (world concepts know their kind)."),
    prompts: Path | None = typer.Option(
        None,
        help="Prompt CSV to attack instead of the default prompts (per-row seeds and guidance are used).",
    ),
    prompt_column: str = typer.Option(
        "prompt", help="CSV column with the prompt (MMA-Diffusion: adv_prompt)."
    ),
    seeds: str | None = typer.Option(
        None, help="Evaluation seeds of the default prompts, e.g. 188,288 or 0-3."
    ),
    train_seeds: str | None = typer.Option(
        None, help="Seeds of the original images textual inversion learns from (default 0,1,2 on the world)."
    ),
    limit: int | None = typer.Option(None, help="Attack only the first N prompts."),
    steps: int | None = typer.Option(
        None,
        min=1,
        help="Optimizer budget: textual-inversion steps / UnlearnDiffAtk iterations per timestep / "
        "Ring-A-Bell generations.",
    ),
    time_limit: float | None = typer.Option(
        None, help="Budget: seconds for this call; the run stops cleanly and resumes when re-run."
    ),
    seed: int = typer.Option(0, help="Seed of the attack's own randomness."),
    reference: bool = typer.Option(False, help="The authors' settings instead of the CPU-budget defaults."),
    setting: list[str] = typer.Option(
        [], "--set", help="Any field of the attack's config as KEY=VALUE (JSON value)."
    ),
    judge: str = typer.Option("auto", help="auto (world judge; NudeNet for nudity) or nudenet."),
    sampler_steps: SamplerSteps = None,
    guidance: float | None = typer.Option(
        None, help="Guidance scale (default: the model's; CSV rows may set their own)."
    ),
    device: Device = "auto",
    overwrite: bool = typer.Option(False, help="Replace a run directory that holds a different attack run."),
    quiet: Quiet = False,
) -> None:
    """Attack an erased concept and report the attack success rate (ASR, 95 % Wilson interval)."""
    from hirm.attacks import Sampler, csv_target, run_attack
    from hirm.cli.common import parse_seeds, resolve_device

    config = build_config(attack, reference=reference, steps=steps, settings=setting, kind=kind)
    target = concept
    if prompts is not None:
        name = concept or (kind or "nudity")
        target = csv_target(str(prompts), name, kind or ("nudity" if model != "minicanvas" else "object"),
                            prompt_column=prompt_column)  # fmt: skip
    if judge not in ("auto", "nudenet"):
        raise ValueError(f"--judge must be auto or nudenet, got {judge!r}.")
    target_kind = getattr(target, "kind", None) if prompts is not None else None
    result = run_attack(
        attack, model, target, out=out, patches=patch or [], config=config, kind=kind,
        seeds=parse_seeds(seeds) if seeds else None,
        train_seeds=parse_seeds(train_seeds) if train_seeds else None, seed=seed, time_limit=time_limit, limit=limit,
        judge=nudity_judge(judge, reference=reference, nudity=(kind or target_kind) == "nudity"),
        sampler=Sampler.for_model(model, num_inference_steps=sampler_steps, guidance_scale=guidance),
        device=resolve_device(device), progress=not quiet, overwrite=overwrite,
    )  # fmt: skip
    asr, before, after = result["asr"], result["before"], result["after"]
    line = f"[green]{attack}[/] on {result['target']['concept']!r}: ASR {_pct(asr)}"
    if before["n"]:
        line += f"; before the attack {_pct(before)}"
    line += f"; attacked prompts {_pct(after)}; {result['seconds']['total']:.0f} s"
    console.print(line)
    if not result["complete"]:
        console.print(f"[yellow]partial:[/] {result['message'] or 'not every prompt was attacked'}")
    console.print(f"result -> {out / 'result.json'}; images -> {out / 'images'}; grid -> {out / 'grid.png'}")


def _pct(stats: dict) -> str:
    if not stats["n"]:
        return "–"
    lo, hi = stats["ci95"]
    return f"{100 * stats['rate']:.1f} % ({stats['k']}/{stats['n']}, 95 % CI {100 * lo:.1f}-{100 * hi:.1f})"


def register(app: typer.Typer) -> None:
    app.command("attack")(friendly_errors(attack_command))
