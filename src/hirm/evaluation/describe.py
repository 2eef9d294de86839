"""Plain-language descriptions of an erasure, of how images were made, and of the UnlearnCanvas metrics.

Shared by the report (``hirm report``) and the model card (``hirm export card``). Everything returns
``(label, text)`` pairs or sentences in plain words: no Python reprs (lists are written "188, 288",
concept records "Cats (object)").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Display names of the registered methods.
METHOD_NAMES: dict[str, str] = {
    "hirm": "HiRM",
    "naive": "naive baseline (paper: final hidden state)",
    "uce": "UCE",
    "esd-x": "ESD-x",
    "esd-u": "ESD-u",
    "diffquickfix": "DiffQuickFix",
}

#: HiRM's trainable sets in words.
TRAINABLE_NAMES: dict[str, str] = {
    "first-attn": "block 0 self-attention (q, k, v, out) + MLP",
    "block0-attn": "block 0 self-attention",
    "attn-only": "self-attention of every block",
    "mlp-only": "block 0 MLP",
    "mlp-attn": "block 0 MLP + self-attention of every block",
    "final-attn": "last block's self-attention",
    "mlp-final-attn": "block 0 MLP + last block's self-attention",
    "mix-attn": "block 0 + last block self-attention",
    "all": "every parameter of the encoder",
}


def plain(value: Any) -> str:
    """A value in words: lists joined by commas, mappings as ``key value; ...``, floats with ``:g``."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k} {plain(v)}" for k, v in value.items()) or "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) or "none"
    return str(value)


def method_name(method: str | None) -> str:
    if not method:
        return "unknown"
    return " + ".join(METHOD_NAMES.get(m, m) for m in method.split("+"))


def ordinal_block(layer: int) -> str:
    if layer == -1:
        return "the last block"
    if layer == -2:
        return "the second-to-last block"
    return f"block {layer}" if layer >= 0 else f"block {layer} (from the end)"


def readout_text(read: Mapping[str, Any] | None) -> str:
    """Where HiRM reads the representation, e.g. "self-attention output of the last block (out_proj)"."""
    if not read:
        return "the model family's default"
    site, layer = read.get("site"), int(read.get("layer", -1))
    if site == "final":
        return "final hidden state (last_hidden_state, after the final layer norm)"
    if site == "attn":
        return f"self-attention output of {ordinal_block(layer)} (out_proj, before the residual add)"
    if site == "mlp":
        return f"MLP output of {ordinal_block(layer)} (before the residual add)"
    return f"residual stream after {ordinal_block(layer)}"


def target_text(target: Mapping[str, Any] | None) -> str:
    """A concept's misdirection target in words (HiRM-R / HiRM-S / a stored vector)."""
    if not target:
        return "–"
    kind = target.get("kind")
    if kind == "random":
        where = " drawn on CUDA as the authors do" if target.get("draw_device") == "cuda" else ""
        if target.get("scale") == "readout-rms":
            size = f"scaled to {plain(float(target.get('factor', 1.0)))}x the read-out's RMS"
        else:
            coeff = target.get("coeff")
            size = "the reference norm, 5000 on 77 x 768" if coeff is None else f"norm {plain(float(coeff))}"
        return f"HiRM-R: random direction (seed {target.get('seed', 42)}, {size}{where})"
    if kind == "prompt":
        coeff = float(target.get("coeff", 1.0))
        scale = "" if coeff == 1.0 else f", x {plain(coeff)}"
        return f"HiRM-S: the representation of the prompt \u201c{target.get('prompt')}\u201d{scale}"
    if kind == "file":
        return f"vector {target.get('key', 'target')} from {target.get('path')}"
    return plain(target)


def concepts_text(specs: Sequence[Any]) -> str:
    """``Cats (object), Van Gogh (style)`` from concept records (dicts with text/kind) or bare strings."""
    parts = []
    for spec in specs:
        if isinstance(spec, Mapping):
            parts.append(
                f"{spec.get('text')} ({spec.get('kind')})" if spec.get("kind") else str(spec.get("text"))
            )
        else:
            parts.append(str(spec))
    return ", ".join(parts) or "–"


def precision_text(precision: str | None) -> str:
    return {
        "bfloat16": "bfloat16 autocast (weights in float32)",
        "float32": "float32",
        "bf16": "bfloat16 autocast",
        "fp32": "float32",
        "auto": "bfloat16 autocast where the hardware has it, else float32",
    }.get(str(precision), plain(precision))


def loss_text(final_loss: Mapping[str, float] | None, losses: Mapping[str, Sequence[float]] | None) -> str:
    if not final_loss:
        return "–"
    parts = []
    for component, value in final_loss.items():
        curve = (losses or {}).get(component) or []
        start = f"{curve[0]:.4g} -> " if curve else ""
        parts.append(f"{component}: {start}{value:.4g}")
    return "; ".join(parts)


def erasure_facts(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """How a patch was made: from a result's patch record or from a patch's own metadata.

    ``info`` holds ``method``, ``config``, ``steps``, ``lr``, ``precision``, ``final_loss``, ``losses`` and
    the concept records under ``concept_specs`` (result files) or ``concepts`` (patch metadata).
    """
    config = info.get("config") or {}
    specs = info.get("concept_specs") or info.get("concepts") or []
    facts = [("Method", method_name(info.get("method"))), ("Concepts", concepts_text(specs))]
    targets = {target_text(s.get("target")) for s in specs if isinstance(s, Mapping) and s.get("target")}
    if "read" in config:  # HiRM and the naive baseline misdirect a read-out to a target
        facts.append(("Target", "; ".join(sorted(targets)) or "–"))
        facts.append(("Read-out", readout_text(config.get("read"))))
    if "trainable" in config:
        name = str(config["trainable"])
        facts.append(("Trained", f"{TRAINABLE_NAMES.get(name, name)} ({name})"))
    facts += [
        ("Optimizer steps", plain(_first(info.get("steps"), config.get("steps")))),
        ("Learning rate", plain(_first(info.get("lr"), config.get("lr")))),
        ("Precision", precision_text(info.get("precision") or config.get("precision"))),
        ("Loss (first -> last step)", loss_text(info.get("final_loss"), info.get("losses"))),
    ]
    return [(label, text) for label, text in facts if text != "–" or label in ("Method", "Concepts")]


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def sampling_facts(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """How the evaluated images were made, from a result's ``meta`` block."""
    settings = meta.get("settings") or {}
    scheduler = (settings.get("scheduler") or {}).get("class")
    size = (
        f"{settings['height']} x {settings['width']} px"
        if settings.get("height") and settings.get("width")
        else "the pipeline's default"
    )
    facts = [
        ("Model", plain(meta.get("model"))),
        ("Sampler", plain(scheduler)),
        ("Sampler steps", plain(settings.get("num_inference_steps"))),
        ("Guidance scale", plain(settings.get("guidance_scale"))),
        ("Image size", size),
        ("Seeds", plain(meta.get("seeds"))),
        ("Sampling precision", precision_text(settings.get("precision"))),
        ("Grid templates", quoted(settings.get("templates"))),
        ("Held-out templates", quoted(settings.get("heldout_templates"))),
        ("Super-category templates", quoted(settings.get("super_templates"))),
        ("hirm", f"{plain(meta.get('hirm_version'))}, {plain(meta.get('date'))}"),
        ("Machine", plain(meta.get("machine"))),
    ]
    return [(label, text) for label, text in facts if text not in ("–", "none")]


def quoted(templates: Sequence[str] | None) -> str:
    return "; ".join(f"\u201c{t}\u201d" for t in templates or ()) or "none"


def metric_definitions(domain: str | None = None) -> list[tuple[str, str, str]]:
    """``(name, definition, which direction is better)`` of UA, IRA, CRA, AA and the two extra UAs."""
    d = domain or "style or object"
    other = {"style": "object", "object": "style"}.get(domain or "", "other")
    return [
        (
            "UA",
            f"unlearning accuracy: share of images whose prompt names the erased {d} that the {d} judge "
            "does not recognise as it",
            "higher is better (erased)",
        ),
        (
            "IRA",
            f"in-domain retain accuracy: share of images of the other {d}s that the {d} judge still "
            "recognises",
            "higher is better (neighbours kept)",
        ),
        (
            "CRA",
            f"cross-domain retain accuracy: share of all images whose {other} the {other} judge recognises",
            "higher is better (the other domain kept)",
        ),
        ("AA", "average accuracy: mean of UA, IRA and CRA", "higher is better"),
        (
            "UA held-out",
            "UA on prompt templates never used in training (paraphrases of the erased concept)",
            "higher is better",
        ),
        (
            "UA super",
            "UA on prompts that add the concept's super-category word (e.g. \u201cCats (animal)\u201d)",
            "higher is better",
        ),
    ]


INTERVAL_NOTE = (
    "Each percentage is followed by n (the number of judged images) and a 95 % Wilson score interval; "
    "images of different seeds and prompts are counted as independent draws. AA is a mean of three "
    "shares and has no interval. Means over concepts are given as mean ± standard deviation."
)
