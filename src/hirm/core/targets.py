"""Designated vectors that a concept's high-level representation is misdirected to."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from hirm.core.config import (
    PromptTarget,
    RandomTarget,
    ReadingPoint,
    Target,
    VectorTarget,
    reference_steering_coeff,
)
from hirm.core.encoder import read_representation, tokenize


def random_target(seq_len: int, width: int, *, seed: int = 42, coeff: float | None = None) -> Tensor:
    """HiRM-R target (1, seq_len, width): ``rand`` from ``seed`` (uniform [0, 1)), scaled to norm ``coeff``.

    Uses its own generator, so it equals the reference ``torch.manual_seed(42); torch.rand(...)``
    without touching the global random state.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    direction = torch.rand(1, seq_len, width, generator=generator)
    scale = reference_steering_coeff(seq_len, width) if coeff is None else coeff
    return direction / direction.norm() * scale


@torch.no_grad()
def build_target(
    target: Target, *, encoder: nn.Module, tokenizer, point: ReadingPoint, seq_len: int, width: int
) -> Tensor:
    """The (1, seq_len, width) float32 CPU target for one concept; ``encoder`` must be the original."""
    if isinstance(target, RandomTarget):
        return random_target(seq_len, width, seed=target.seed, coeff=target.coeff)
    if isinstance(target, PromptTarget):
        device = next(encoder.parameters()).device
        ids = tokenize(tokenizer, [target.prompt], device=device, allow_empty=True)
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
