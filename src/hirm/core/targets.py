"""Designated vectors that a concept's high-level representation is misdirected to."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from hirm.core.config import (
    DrawDevice,
    PromptTarget,
    RandomTarget,
    ReadingPoint,
    Target,
    VectorTarget,
    reference_steering_coeff,
    render,
)
from hirm.core.encoder import read_representation, tokenize


def random_direction(seq_len: int, width: int, *, seed: int = 42, draw_device: DrawDevice = "cpu") -> Tensor:
    """``rand(1, seq_len, width)`` (uniform [0, 1)) from ``seed`` on ``draw_device``, normalised to norm 1.

    ``draw_device="cuda"`` is the authors' draw: ``torch.manual_seed(seed)`` then
    ``torch.rand(1, L, D, device="cuda")`` (a fresh CUDA generator with that seed gives the same numbers
    without touching the global random state); the normalisation is done there too, as theirs is. The
    CPU draw equals ``torch.manual_seed(seed); torch.rand(1, L, D)`` on the CPU, which is a different
    tensor from the authors' (same distribution). Returns a float32 CPU tensor.
    """
    if draw_device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "RandomTarget(draw_device='cuda') reproduces the authors' CUDA draw and needs a CUDA GPU; "
            "none is available here. Use draw_device='cpu' (same distribution, other numbers)."
        )
    generator = torch.Generator(device=draw_device).manual_seed(seed)
    direction = torch.rand(1, seq_len, width, generator=generator, device=draw_device)
    return (direction / direction.norm()).cpu()


def random_target(
    seq_len: int,
    width: int,
    *,
    seed: int = 42,
    coeff: float | None = None,
    draw_device: DrawDevice = "cpu",
) -> Tensor:
    """HiRM-R target (1, seq_len, width): :func:`random_direction` times ``coeff`` (``None`` = the
    reference norm, :func:`hirm.core.config.reference_steering_coeff`)."""
    scale = reference_steering_coeff(seq_len, width) if coeff is None else coeff
    return random_direction(seq_len, width, seed=seed, draw_device=draw_device) * scale


def rms(x: Tensor) -> float:
    """Root mean square of every entry."""
    return x.double().pow(2).mean().sqrt().item()


@torch.no_grad()
def build_target(
    target: Target,
    *,
    encoder: nn.Module,
    tokenizer,
    point: ReadingPoint,
    seq_len: int,
    width: int,
    template: str = "{concept}",
    readout: Tensor | None = None,
) -> Tensor:
    """The (1, seq_len, width) float32 CPU target for one training prompt; ``encoder`` must be the original.

    Args:
        template: the template of the training prompt; a :class:`PromptTarget` is read in the same
            template with its prompt in the concept's place.
        readout: the concept's read-outs on the original encoder (n, L, D), needed for
            ``RandomTarget(scale="readout-rms")``.
    """
    if isinstance(target, RandomTarget):
        if target.scale == "readout-rms":
            if readout is None:
                raise ValueError("RandomTarget(scale='readout-rms') needs the concept's read-out.")
            direction = random_direction(seq_len, width, seed=target.seed, draw_device=target.draw_device)
            return direction * (target.factor * rms(readout) / rms(direction))
        return random_target(
            seq_len, width, seed=target.seed, coeff=target.coeff, draw_device=target.draw_device
        )
    if isinstance(target, PromptTarget):
        device = next(encoder.parameters()).device
        ids = tokenize(tokenizer, [render(template, target.prompt)], device=device, allow_empty=True)
        return read_representation(encoder, ids, point).float().cpu() * target.coeff
    if isinstance(target, VectorTarget):
        return _vector_from_file(target, seq_len, width)
    raise TypeError(f"Unknown target type {type(target).__name__}.")


def _vector_from_file(target: VectorTarget, seq_len: int, width: int) -> Tensor:
    path = Path(target.path)
    if not path.is_file():
        raise FileNotFoundError(f"Target vector file {path} does not exist.")
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error types for other files
        raise ValueError(
            f"Target vector file {path} is not a safetensors file ({type(err).__name__}); hirm never loads "
            "pickles (.pt/.pth/.bin). Save the vector with safetensors.torch.save_file({'target': t}, ...)."
        ) from None
    with handle:
        if target.key not in handle.keys():
            raise ValueError(f"{path} has no tensor {target.key!r}; it has {list(handle.keys())}.")
        vector = handle.get_tensor(target.key).float()
    if vector.shape == (width,):
        vector = vector.expand(seq_len, width)
    vector = vector.reshape(-1, *vector.shape[-2:]) if vector.dim() >= 2 else vector
    if tuple(vector.shape[-2:]) != (seq_len, width) or vector.numel() != seq_len * width:
        raise ValueError(
            f"Target {path}:{target.key} has shape {tuple(vector.shape)}; expected ({width},), "
            f"({seq_len}, {width}) or (1, {seq_len}, {width})."
        )
    if not torch.isfinite(vector).all():
        raise ValueError(f"Target {path}:{target.key} contains NaN or infinite values.")
    return vector.reshape(1, seq_len, width) * target.coeff
