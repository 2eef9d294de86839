"""Checks of user input shared by the API and the CLI: each failure is a one-line ``ValueError`` that
says what is allowed."""

from __future__ import annotations

import string
from collections.abc import Iterable

import torch


def check_device(text: str | torch.device, *, allow_auto: bool = False) -> torch.device | str:
    """``text`` as a torch device that exists here (``"auto"`` passes through when ``allow_auto``)."""
    if allow_auto and str(text) == "auto":
        return "auto"
    choices = "cpu, cuda, cuda:N, mps" + (" or auto" if allow_auto else "")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {text!r} is not a torch device; use {choices}.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {text}: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                "use --device cpu, or install a CUDA build of torch."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {text}: there are only {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text}: MPS is not available here; use --device cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {text}: hirm runs on {choices}, not {device.type}.")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 matrix units (CUDA >= sm80, CPUs with AMX / AVX-512-BF16);
    where it has, ``precision="auto"`` runs under bf16 autocast."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def template_fields(template: str, what: str = "Template") -> list[str]:
    """The replacement fields of a ``str.format`` template (errors name the template)."""
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        raise ValueError(
            f"{what} {template!r} is not a valid template ({err}); write {{{{ and }}}} for literal braces."
        ) from None


def check_template(
    template: str, *, allowed: Iterable[str], required: Iterable[str] = (), what: str = "Template"
) -> None:
    """Refuse fields other than ``allowed`` (positional ``{0}``, ``{}``, ``{x.attr}``, ...) and missing
    ``required`` ones, before any work."""
    allowed, required = set(allowed), set(required)
    names = ", ".join(f"{{{n}}}" for n in sorted(allowed))
    fields = template_fields(template, what)
    for field in fields:
        if field not in allowed:
            raise ValueError(
                f"{what} {template!r} has the field {{{field}}}; it may only use {names} (write {{{{ and "
                "}} for literal braces)."
            )
    missing = sorted(required - set(fields))
    if missing:
        raise ValueError(f"{what} {template!r} must contain {', '.join(f'{{{m}}}' for m in missing)}.")
