"""Where does a text-to-image pipeline read a concept? Padding, token-swap and causal-tracing probes.

These probes check that a proving ground behaves like Stable Diffusion where concept erasure acts
(``benchmarks/world_fidelity.py`` runs them on MiniCanvas), and they run on any SD-style pipeline with a
CLIP text encoder (``hirm trace``).

- **Padding test** (Toker et al., "Padding Tone", NAACL 2025): keep the prompt rows of the text encoder's
  output (start token through the first end token) and replace every later row by the same position's
  row of the empty prompt ("clean pads"); or keep the padding rows and replace the prompt rows by the
  empty prompt's. SD 1.x/2.x and SDXL (frozen CLIP) keep the content in the first case and lose it in
  the second.
- **Token swap**: replace only the rows of one concept word by the rows of the same prompt written with
  another concept (same token count), or only the padding rows. Where the denoiser reads the prompt
  tokens, the first flips the image to the other concept and the second changes little.
- **Causal tracing** (Meng et al. ROME; Basu et al. DiffQuickFix / LocoGen for CLIP): corrupt the
  concept's token embeddings with Gaussian noise, then restore one block's output at one position from
  the clean run and measure how much of the clean conditioning comes back: a layer x position map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hirm.evaluation.metrics import proportion


@dataclass(frozen=True)
class ProbeSettings:
    """Sampler settings of the probes (MiniCanvas's defaults) and the generation batch size."""

    num_inference_steps: int = 25
    guidance_scale: float = 6.0
    height: int | None = 32
    width: int | None = 32
    precision: str = "bf16"
    batch_size: int = 100

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}.")
        if self.num_inference_steps < 1 or self.batch_size < 1:
            raise ValueError("num_inference_steps and batch_size must be >= 1.")


# ----------------------------------------------------------------------------- conditioning rows
@torch.no_grad()
def text_rows(pipe: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The text encoder's ``last_hidden_state`` (N, L, D) fp32 as the pipeline computes it, the token
    ids (N, L) and the index of each prompt's first end token (N,)."""
    tok = pipe.tokenizer
    ids = tok(
        list(prompts),
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    enc = pipe.text_encoder
    rows = enc(ids.to(enc.device)).last_hidden_state.float().cpu()
    eot = (ids == tok.eos_token_id).int().argmax(dim=1)
    return rows, ids, eot


def with_clean_pads(rows: torch.Tensor, eot: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Keep rows ``0..eot``; every later row becomes the empty prompt's row at that position."""
    out = rows.clone()
    for i, e in enumerate(eot.tolist()):
        out[i, e + 1 :] = empty[e + 1 :]
    return out


def with_clean_prompt(rows: torch.Tensor, eot: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Keep the padding rows; rows ``0..eot`` become the empty prompt's rows at those positions."""
    out = rows.clone()
    for i, e in enumerate(eot.tolist()):
        out[i, : e + 1] = empty[: e + 1]
    return out


def swap_rows(
    rows: torch.Tensor,
    other: torch.Tensor,
    ids: torch.Tensor,
    other_ids: torch.Tensor,
    eot: torch.Tensor,
    *,
    part: str,
) -> torch.Tensor:
    """``rows`` with the rows of ``other`` at the positions where the token ids differ (``part="word"``)
    or at every position after the end token (``part="padding"``). Prompts must have equal token counts."""
    out = rows.clone()
    for i, e in enumerate(eot.tolist()):
        if part == "word":
            diff = torch.nonzero(ids[i] != other_ids[i]).flatten()
            out[i, diff] = other[i, diff]
        elif part == "padding":
            out[i, e + 1 :] = other[i, e + 1 :]
        else:
            raise ValueError(f"part must be 'word' or 'padding', got {part!r}.")
    return out


@torch.no_grad()
def generate_from_rows(
    pipe: Any, rows: torch.Tensor, seeds: Sequence[int], settings: ProbeSettings, *, progress: bool = False
) -> np.ndarray:
    """Images (N, H, W, 3) uint8 from conditioning rows (N, L, D), negative = the empty prompt's rows."""
    from tqdm.auto import tqdm

    empty, _, _ = text_rows(pipe, [""])
    dtype = pipe.unet.dtype
    out = []
    device_type = pipe.device.type
    for start in tqdm(range(0, len(rows), settings.batch_size), disable=not progress, desc="probe images"):
        chunk = rows[start : start + settings.batch_size]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start : start + len(chunk)]]
        kwargs: dict[str, Any] = dict(
            prompt_embeds=chunk.to(pipe.device, dtype),
            negative_prompt_embeds=empty.expand(len(chunk), -1, -1).to(pipe.device, dtype),
            generator=gens,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            output_type="np",
        )
        if settings.height is not None:
            kwargs.update(height=settings.height, width=settings.width)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
            images = pipe(**kwargs).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def judged(judge: Any, images: np.ndarray) -> np.ndarray:
    """Argmax class index of each image under ``judge`` (a :class:`hirm.evaluation.judges.Judge`)."""
    from hirm.evaluation.judges import judge_probabilities

    return judge_probabilities(judge, images).argmax(1)


# ----------------------------------------------------------------------------- causal tracing
@dataclass(frozen=True)
class TraceResult:
    """Restoration scores (layers, positions): 1 = restoring that state brings the clean output back.

    Attributes:
        scores: (num_layers, L) mean over prompts of ``1 - |restored - clean| / |corrupt - clean|``,
            measured on the output rows the denoiser reads (start token through end token).
        positions: (L,) labels of the aligned positions (``"bos"``, ``"concept-1"``, ``"concept"``
            (its last token), ``"after+1"`` ... ``"eot"``), see :func:`trace_concept`.
        prompts: the traced prompts.
    """

    scores: np.ndarray
    positions: list[str]
    prompts: list[str]
    noise: float


def _concept_span(tokenizer, prompt: str, concept: str) -> tuple[int, int]:
    """Token positions [start, end) of ``concept`` in ``prompt`` (start token included in the count).

    The concept is matched as whole words, case-insensitively; where it occurs more than once the last
    occurrence counts (the default templates put the concept last: "A painting of painting.")."""
    import re

    matches = list(re.finditer(rf"(?<!\w){re.escape(concept.lower())}(?!\w)", prompt.lower()))
    if not matches:
        raise ValueError(f"Concept {concept!r} does not occur as a word in the prompt {prompt!r}.")
    at, word = matches[-1].start(), concept
    before = len(tokenizer(prompt[:at].strip(), truncation=True).input_ids) - 1  # bos + words, no eot
    inner = len(tokenizer(prompt[at : at + len(word)], truncation=True).input_ids) - 2
    return before, before + inner


@torch.no_grad()
def trace_concept(
    text_encoder: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    concept: str,
    *,
    noise_scale: float = 3.0,
    samples: int = 4,
    seed: int = 0,
) -> TraceResult:
    """Causal tracing of ``concept`` through a CLIP text encoder (DiffQuickFix / LocoGen style).

    For each prompt: the concept's token embeddings get Gaussian noise of ``noise_scale`` times the
    standard deviation of the token-embedding table (ROME's 3 sigma; ``samples`` draws). Then, for every
    block ``l`` and position ``p``, the clean output of block ``l`` is restored at ``p`` and the rest of
    the encoder recomputed; the score is the share of the corruption's effect on the output rows (start
    through end token, ``last_hidden_state``) that the restoration undoes. Positions are aligned across
    prompts relative to the concept (``bos``, ``before-k``, ``concept-k``, ``concept`` = its last token,
    ``after+k``, ``eot``). Uses forward hooks on the encoder's own modules, so any ``CLIPTextModel``
    (SD 1.x/2.x, SDXL's two, SD3's, Flux's) can be traced. The score reads ``last_hidden_state`` (what
    SD 1.x/2.x's denoiser reads); SDXL's and SD3's denoisers read the penultimate hidden state instead.
    """
    model = text_encoder.text_model if hasattr(text_encoder, "text_model") else text_encoder
    layers = model.encoder.layers
    table = model.embeddings.token_embedding
    sigma = float(table.weight.float().std())
    gen = torch.Generator().manual_seed(seed)
    dev = table.weight.device
    per_prompt: list[dict[str, np.ndarray]] = []
    for prompt in prompts:
        ids = tokenizer(prompt, truncation=True, return_tensors="pt").input_ids.to(dev)
        start, end = _concept_span(tokenizer, prompt, concept)
        n_tok = ids.shape[1]
        out = model(ids, output_hidden_states=True)
        clean, states = out.last_hidden_state.float(), out.hidden_states  # states[l + 1] = after block l
        noise = (
            torch.randn((samples, end - start, table.weight.shape[1]), generator=gen) * noise_scale * sigma
        )

        def corrupt_hook(
            _module, _inputs, output, noise=noise.to(dev, table.weight.dtype), span=(start, end)
        ):
            output = output.clone()
            output[:, span[0] : span[1]] += noise.repeat(output.shape[0] // samples, 1, 1)
            return output

        handle = table.register_forward_hook(corrupt_hook)
        try:
            corrupt = model(ids.expand(samples, -1)).last_hidden_state.float()
            base_err = (corrupt - clean).flatten(1).norm(dim=1).mean()
            grid = np.zeros((len(layers), n_tok))
            batch_ids = ids.expand(samples * n_tok, -1)
            where = torch.arange(n_tok, device=dev).repeat_interleave(
                samples
            )  # row b restores position where[b]
            for layer in range(len(layers)):
                value = states[layer + 1][0, where]

                def restore_hook(_module, _inputs, output, value=value, where=where):
                    h = output[0] if isinstance(output, tuple) else output
                    h = h.clone()
                    h[torch.arange(len(where), device=where.device), where] = value.to(h.dtype)
                    return (h, *output[1:]) if isinstance(output, tuple) else h

                r = layers[layer].register_forward_hook(restore_hook)
                try:
                    restored = model(batch_ids).last_hidden_state.float()
                finally:
                    r.remove()
                err = (restored - clean).flatten(1).norm(dim=1).view(n_tok, samples).mean(1)
                grid[layer] = (1 - err / base_err).cpu().numpy() if base_err > 0 else 0.0
        finally:
            handle.remove()
        per_prompt.append(dict(zip(_position_labels(start, end, n_tok), grid.T, strict=True)))
    keys = sorted({k for p in per_prompt for k in p}, key=_label_order)
    scores = np.stack([np.mean([p[k] for p in per_prompt if k in p], axis=0) for k in keys], axis=1)
    return TraceResult(scores=scores, positions=keys, prompts=list(prompts), noise=noise_scale * sigma)


def _position_labels(start: int, end: int, n_tok: int) -> list[str]:
    labels = []
    for p in range(n_tok):
        if p == 0:
            labels.append("bos")
        elif p < start:
            labels.append(f"before-{start - p}")
        elif p < end:
            labels.append("concept" if p == end - 1 else f"concept-{end - 1 - p}")
        elif p == n_tok - 1:
            labels.append("eot")
        else:
            labels.append(f"after+{p - end + 1}")
    return labels


def _label_order(label: str) -> tuple[int, int]:
    if label == "bos":
        return (0, 0)
    if label.startswith("before-"):
        return (1, -int(label.split("-")[1]))
    if label.startswith("concept-"):
        return (2, -int(label.split("-")[1]))
    if label == "concept":
        return (2, 0)
    if label.startswith("after+"):
        return (3, int(label.split("+")[1]))
    return (4, 0)


def padding_and_swap_summary(hits: dict[str, Sequence[bool]]) -> dict[str, Any]:
    """``{name: proportion(hits)}`` (value, k, n, 95 % Wilson interval) for each probe's hit list."""
    return {name: proportion(h) for name, h in hits.items()}


def trace_heatmap(result: TraceResult, *, title: str = "causal trace", cell: int = 28) -> Any:
    """A PIL image of ``result.scores``: rows = blocks (0 at the top), columns = aligned positions,
    white (0) to dark red (1), each cell labelled with its score. Drawn with PIL (no plotting library)."""
    from PIL import Image, ImageDraw

    layers, positions = result.scores.shape
    left, top = 64, 40
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    bottom = max(int(measure.textlength(p)) for p in result.positions) + 12
    img = Image.new("RGB", (left + cell * positions + 10, top + cell * layers + bottom), "white")
    draw = ImageDraw.Draw(img)
    draw.text(
        (4, 4), f"{title}  (restored share of the clean output; noise {result.noise:.3g})", fill="black"
    )
    for layer in range(layers):
        draw.text((4, top + layer * cell + cell // 3), f"block {layer}", fill="black")
        for pos in range(positions):
            v = float(np.clip(result.scores[layer, pos], 0, 1)) + 0.0  # + 0.0 turns -0.0 into 0.0
            colour = (255, int(255 * (1 - 0.85 * v)), int(255 * (1 - v)))
            x0, y0 = left + pos * cell, top + layer * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour)
            label = f"{v:.2f}"
            draw.text((x0 + 3, y0 + cell // 3), "1" if label == "1.00" else label[1:], fill="black")
    for pos, label in enumerate(result.positions):  # position names written upwards under their column
        tag = Image.new("RGB", (int(measure.textlength(label)) + 2, 12), "white")
        ImageDraw.Draw(tag).text((1, 0), label, fill="black")
        tag = tag.rotate(90, expand=True)
        img.paste(tag, (left + pos * cell + (cell - tag.width) // 2, top + layers * cell + 4))
    return img
