"""Structure of a CLIP text encoder, independent of the transformers version.

``CLIPTextModel`` exposes its transformer directly in transformers 5 (parameter names
``encoder.layers.0...``) and under ``text_model`` in transformers 4 and in
``CLIPTextModelWithProjection`` (``text_model.encoder.layers.0...``). Everything in hirm uses the
*canonical* name, without the ``text_model.`` prefix, so patches move between versions and classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from hirm.core.config import REFERENCE_READ, ReadingPoint

_PREFIX = "text_model."


class ConceptError(ValueError):
    """A concept or prompt that cannot be used (empty, too long for the tokenizer)."""


def text_transformer(encoder: nn.Module) -> nn.Module:
    """The module holding ``embeddings``, ``encoder.layers`` and ``final_layer_norm``."""
    inner = getattr(encoder, "text_model", encoder)
    if not (
        hasattr(inner, "embeddings") and hasattr(inner, "encoder") and hasattr(inner, "final_layer_norm")
    ):
        raise TypeError(
            f"{type(encoder).__name__} is not a CLIP text encoder (expected embeddings, encoder.layers, "
            "final_layer_norm). Supported: transformers CLIPTextModel and CLIPTextModelWithProjection."
        )
    return inner


def layers(encoder: nn.Module) -> nn.ModuleList:
    return text_transformer(encoder).encoder.layers


def canonical_name(name: str) -> str:
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


def named_parameters(encoder: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters by canonical name (the encoder's own projection keeps its name)."""
    return {canonical_name(n): p for n, p in encoder.named_parameters()}


def resolve_layer(encoder: nn.Module, index: int) -> int:
    n = len(layers(encoder))
    resolved = index + n if index < 0 else index
    if not 0 <= resolved < n:
        raise ValueError(f"Layer {index} does not exist: this encoder has {n} blocks (0..{n - 1}).")
    return resolved


def reading_module(encoder: nn.Module, point: ReadingPoint | None) -> nn.Module:
    """The module whose forward output is the representation at ``point`` (``None``: the reference point,
    the last block's self-attention output)."""
    point = REFERENCE_READ if point is None else point
    if point.site == "final":
        return text_transformer(encoder).final_layer_norm
    block = layers(encoder)[resolve_layer(encoder, point.layer)]
    return {"attn": block.self_attn.out_proj, "mlp": block.mlp, "hidden": block}[point.site]


class _StopForward(Exception):
    pass


@contextmanager
def early_exit(module: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Capture ``module``'s output and stop the forward pass right there.

    Nothing after the reading point is computed; autograd still tracks everything before it.
    """
    store: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor | tuple) -> None:
        store["out"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def read_representation(
    encoder: nn.Module,
    input_ids: Tensor,
    point: ReadingPoint | None,
    overrides: dict[str, Tensor] | None = None,
) -> Tensor:
    """Representation at ``point`` (``None``: the reference point) for ``input_ids`` (B, L) -> (B, L, D).
    Differentiable.

    ``overrides`` (the encoder's own parameter names -> tensors) replaces those parameters for this call
    only (``torch.func.functional_call``); see :func:`frozen_linear_casts`.
    """
    with early_exit(reading_module(encoder, point)) as store:
        try:
            if overrides:
                torch.func.functional_call(encoder, overrides, args=(), kwargs={"input_ids": input_ids})
            else:
                encoder(input_ids=input_ids)
        except _StopForward:
            pass
    if "out" not in store:
        raise RuntimeError(f"The reading point {point} was never reached in the forward pass.")
    return store["out"]


def tokenize(
    tokenizer, prompts: list[str], *, device: torch.device | str = "cpu", allow_empty: bool = False
) -> Tensor:
    """Token ids (B, L) exactly as Stable Diffusion pipelines make them: padded to the tokenizer's
    ``model_max_length``. A prompt that would be truncated is an error, not silently cut; so is an
    empty one unless ``allow_empty`` (the empty prompt is a valid anchor or guide, never a concept)."""
    max_len = tokenizer.model_max_length
    for prompt in prompts:
        if not allow_empty and (not prompt or not prompt.strip()):
            raise ConceptError("Empty concept/prompt: give the text of the concept to erase.")
        n = len(tokenizer(prompt, truncation=False)["input_ids"])
        if n > max_len:
            raise ConceptError(
                f"{prompt[:60]!r}... is {n} tokens long (with start/end tokens); the text encoder reads at "
                f"most {max_len}. Shorten it or split it into several concepts."
            )
    ids = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    return ids["input_ids"].to(device)


def frozen_linear_casts(encoder: nn.Module, dtype: torch.dtype, trainable: set[str]) -> dict[str, Tensor]:
    """``dtype`` copies of the weights and biases of every ``nn.Linear`` none of whose parameters train.

    Autocast casts each linear layer's float32 weight to its compute dtype on every call; for frozen
    layers that is the same cast on every optimizer step. Casting them once and passing the copies as
    ``overrides`` to :func:`read_representation` gives bit-identical results without the repeated cast.
    Keys are the encoder's own parameter names (not canonical names). ``trainable`` holds canonical names.
    """
    casts: dict[str, Tensor] = {}
    for module_name, module in encoder.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        names = {f"{module_name}.{k}": v for k, v in module.named_parameters(recurse=False)}
        if any(canonical_name(n) in trainable for n in names):
            continue
        casts.update({n: v.detach().to(dtype) for n, v in names.items()})
    return casts
