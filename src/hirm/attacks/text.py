"""Prompts as token ids and word embeddings: what every attack optimises over.

An attack changes the *input* of the text encoder, never its weights: a learned vector put where a
placeholder word stands (textual inversion), discrete tokens put in front of a prompt
(UnlearnDiffAtk) or a whole token sequence (Ring-A-Bell). All of them go through
:func:`encode`, which runs the (possibly erased) CLIP text encoder on token ids (B, L) while the
word embeddings of chosen positions are replaced by given vectors (B, k, D), differentiably.

The replacement is a forward hook on the encoder's ``token_embedding`` module, so the position
embeddings, the causal mask and the end-token pooling are the encoder's own, in any transformers
version. Token ids are padded as Stable Diffusion pipelines pad them (to ``model_max_length`` with the
tokenizer's pad token).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from hirm.core.encoder import ConceptError, text_transformer


def token_embedding(encoder: nn.Module) -> nn.Embedding:
    """The encoder's word-embedding table (V, D)."""
    return text_transformer(encoder).embeddings.token_embedding


def special_ids(tokenizer) -> set[int]:
    """Ids of the start, end and pad tokens (never chosen as attack tokens)."""
    return {int(i) for i in tokenizer.all_special_ids}


def vocabulary_ids(tokenizer, vocab_size: int) -> Tensor:
    """Every token id an attack may put in a prompt: the encoder's vocabulary without special tokens."""
    banned = special_ids(tokenizer)
    return torch.tensor([i for i in range(vocab_size) if i not in banned], dtype=torch.long)


def slot_id(tokenizer) -> int:
    """A regular token id standing where injected vectors go (its own embedding is never used)."""
    banned = special_ids(tokenizer)
    return next(i for i in range(len(tokenizer)) if i not in banned)


@contextmanager
def injected(encoder: nn.Module, mask: Tensor, vectors: Tensor) -> Iterator[None]:
    """Within the block, the word embeddings at ``mask`` (B, L) bool are ``vectors`` (B, k, D).

    Every row of ``mask`` must hold exactly k ``True`` entries; ``vectors`` keeps its autograd graph.
    """
    counts = mask.sum(dim=1)
    if vectors.dim() != 3 or bool((counts != vectors.shape[1]).any()):
        raise ValueError(
            f"Each prompt has {counts.tolist()} slots but {tuple(vectors.shape)} vectors were given."
        )

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        out = output.clone()
        out[mask] = vectors.reshape(-1, vectors.shape[-1]).to(out.dtype)
        return out

    handle = token_embedding(encoder).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode(
    encoder: nn.Module, ids: Tensor, mask: Tensor | None = None, vectors: Tensor | None = None
) -> Tensor:
    """``last_hidden_state`` (B, L, D) of token ids (B, L), the word embeddings at ``mask`` replaced by
    ``vectors`` (B, k, D) when given. Differentiable in ``vectors``; what the U-Net is conditioned on."""
    ids = ids.to(next(encoder.parameters()).device)
    if mask is None:
        return encoder(input_ids=ids).last_hidden_state
    with injected(encoder, mask.to(ids.device), vectors):
        return encoder(input_ids=ids).last_hidden_state


def word_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without start/end tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text.strip() else []


def pad(tokenizer, body: Sequence[int]) -> list[int]:
    """``[start] + body + [end]`` padded to ``model_max_length`` as SD pipelines do; too long is an error."""
    length = tokenizer.model_max_length
    ids = [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]
    if len(ids) > length:
        raise ConceptError(
            f"The attacked prompt needs {len(ids)} tokens; the text encoder reads at most {length}. "
            "Use a shorter prompt or fewer attack tokens."
        )
    return ids + [tokenizer.pad_token_id] * (length - len(ids))


def with_slots(
    tokenizer, prompt: str, placeholder: str, k: int, slot_id: int, *, truncate: bool = False
) -> tuple[list[int], list[bool]]:
    """Ids of ``prompt`` where every occurrence of ``placeholder`` becomes ``k`` slot tokens, and the
    slot mask. A prompt without the placeholder gets the slots in front (``"<slots> prompt"``).
    Too long is an error unless ``truncate``: then the tail is cut where the pipeline cuts a prompt,
    and a placeholder that falls in the cut tail is treated as absent (slots in front, tail cut).

    The words around the placeholder are tokenized on their own; CLIP's tokenizer splits on spaces
    first, so this equals tokenizing the whole prompt whenever the placeholder stands between words.
    """
    parts = prompt.split(placeholder)
    if len(parts) > 2:
        raise ValueError(f"{prompt!r} names the placeholder {placeholder!r} more than once.")
    if len(parts) == 1:
        parts = ["", prompt]
    body: list[int] = []
    slots: list[bool] = []
    for i, part in enumerate(parts):
        if i:
            body += [slot_id] * k
            slots += [True] * k
        ids = word_ids(tokenizer, part)
        body += ids
        slots += [False] * len(ids)
    if truncate:
        keep = tokenizer.model_max_length - 2
        if any(slots) and not any(slots[:keep]):
            plain = word_ids(tokenizer, prompt.replace(placeholder, " "))
            body, slots = [slot_id] * k + plain, [True] * k + [False] * len(plain)
        body, slots = body[:keep], slots[:keep]
    ids = pad(tokenizer, body)
    return ids, [False] + slots + [False] * (len(ids) - len(slots) - 1)


def with_prefix(tokenizer, prompt: str, prefix: Sequence[int], *, truncate: bool = False) -> list[int]:
    """Ids of ``prefix`` tokens followed by ``prompt`` (UnlearnDiffAtk's ``prefix_k`` insertion).

    Too long is an error unless ``truncate``: then the prompt's tail is cut where the pipeline cuts
    the attacked prompt (``model_max_length`` with start and end tokens)."""
    body = [*prefix, *word_ids(tokenizer, prompt)]
    return pad(tokenizer, body[: tokenizer.model_max_length - 2] if truncate else body)


def decode(tokenizer, ids: Sequence[int]) -> str:
    """Readable text of token ids (special tokens dropped)."""
    banned = special_ids(tokenizer)
    return tokenizer.decode([int(i) for i in ids if int(i) not in banned]).strip()


def as_batch(rows: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> Tensor:
    return torch.tensor([list(r) for r in rows], dtype=torch.long, device=device)
