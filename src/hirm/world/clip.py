"""Stage 2: MiniCLIP, a transformers ``CLIPModel`` trained contrastively on (image, caption) pairs.

Images enter the vision tower as ``pixel_values = 2 * image - 1`` (image in [0, 1], 32x32); no image
processor is needed. Captions are tokenised with the stage-1 tokenizer. Because a caption may name only
the style, only the object, or a super-category, a batch holds many true positives per caption; the loss
is the symmetric InfoNCE with *soft* targets spread uniformly over all compatible pairs. A second term
with the same targets contrasts each caption with the canonical captions of the batch's images
(:func:`text_anchor_loss`), so that the text tower encodes objects as distinctly as styles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from ._train import autocast, lr_at, run_steps, step_rng, to_float_images
from .captions import CaptionLabel, add_distractors, corpus_texts, sample_caption
from .concepts import CANVAS_TEMPLATE, OBJECTS, STYLES, make_prompt


@dataclass(frozen=True)
class ClipTrainConfig:
    """Sizes and schedule of MiniCLIP (defaults = the shipped model).

    The text tower is laid out like CLIP ViT-L/14's (12 pre-LN blocks, quick-GELU, causal, pooled at the
    end token) at width 256, so that "block 0" and "the last block" mean what they mean in SD.
    """

    text_hidden: int = 256
    text_layers: int = 12
    text_heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    patch_size: int = 8
    projection_dim: int = 256
    batch_size: int = 128
    steps: int = 2000
    lr: float = 5e-4
    text_anchor_weight: float = 1.0
    p_distract: float = 0.3  # share of captions with inserted distractor words (captions.add_distractors)
    corpus_batch_size: int = 64  # language text per step (two views each), see corpus_loss
    corpus_weight: float = 1.0
    corpus_max_words: int = 16
    corpus_max_tokens: int = 24  # views are truncated here (start and end token included)
    corpus_word_drop: float = 0.15
    corpus_temperature: float = 0.05
    token_identity_weight: float = 0.2  # see token_identity_loss
    warmup: int = 100
    weight_decay: float = 0.1  # applied to token/position embeddings too, as OpenCLIP does
    vision_steps: int = 1500
    vision_batch_size: int = 256
    vision_lr: float = 5e-4
    precision: str = "bf16"  # autocast for the forward/backward (weights and optimizer stay fp32)


def make_clip(cfg: ClipTrainConfig, tokenizer) -> CLIPModel:
    """A randomly initialised CLIPModel sized by ``cfg`` for ``tokenizer`` (77 positions)."""
    text = dict(
        vocab_size=len(tokenizer),
        hidden_act="quick_gelu",
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=cfg.projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_act="quick_gelu",
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=32,
        patch_size=cfg.patch_size,
        projection_dim=cfg.projection_dim,
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim))
    # Plain matrix-product attention: on CPU, bf16 scaled-dot-product attention's backward is ~5x slower
    # than the whole rest of a training step. Inference keeps transformers' default (same function).
    model.set_attn_implementation("eager")
    return model


def tokenize(
    tokenizer, texts: list[str], *, pad_to_max: bool = False, max_length: int | None = None
) -> torch.Tensor:
    """Token ids (N, L); ``L = 77`` if ``pad_to_max`` else the longest in the batch (same pooled output,
    because CLIP's text tower is causal and pools at the first eos). ``max_length`` truncates earlier."""
    enc = tokenizer(
        texts,
        padding="max_length" if pad_to_max else "longest",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return enc.input_ids


def train_clip(
    out_dir: Path,
    *,
    tokenizer,
    images: np.ndarray,
    style_idx: np.ndarray,
    object_idx: np.ndarray,
    cfg: ClipTrainConfig,
    seed: int,
    device: torch.device,
    ckpt_dir: Path | None = None,
    progress: bool = True,
) -> CLIPModel:
    """Train MiniCLIP on the rendered pool and ``save_pretrained`` it into ``out_dir``."""
    torch.manual_seed(seed)
    model = make_clip(cfg, tokenizer).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    # Training-only head of token_identity_loss (not saved: the shipped model is the CLIPModel alone).
    identity_head = torch.nn.Linear(cfg.text_hidden, len(tokenizer)).to(device)
    if cfg.token_identity_weight > 0:
        opt.add_param_group({"params": list(identity_head.parameters()), "weight_decay": 0.0})
    pixels_all = to_float_images(images).mul_(2).sub_(1)
    corpus = corpus_texts()

    def step_fn(step: int) -> float:
        rng, _ = step_rng(seed, step, stream=2)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base_lr=cfg.lr, warmup=cfg.warmup, total=cfg.steps)
        idx = rng.integers(len(images), size=cfg.batch_size)
        s, o = style_idx[idx], object_idx[idx]
        caps = [sample_caption(rng, int(a), int(b)) for a, b in zip(s, o, strict=True)]
        compat = np.stack([lab.compatible(s, o) for _, lab in caps])  # (B text, B image)
        target = torch.from_numpy(compat.astype(np.float32)).to(device)
        texts = [add_distractors(rng, c, p=cfg.p_distract) for c, _ in caps]
        ids = tokenize(tokenizer, texts).to(device)
        with autocast(device, cfg.precision):
            out = model(input_ids=ids, pixel_values=pixels_all[idx].to(device))
            loss = soft_clip_loss(out.logits_per_text.float(), target)
            if cfg.text_anchor_weight > 0:
                loss = loss + cfg.text_anchor_weight * text_anchor_loss(
                    model, tokenizer, out.text_embeds, s, o, [lab for _, lab in caps]
                )
            if cfg.token_identity_weight > 0:
                loss = loss + cfg.token_identity_weight * token_identity_loss(
                    identity_head, out.text_model_output.last_hidden_state, ids, tokenizer.eos_token_id
                )
            if cfg.corpus_weight > 0:
                views = corpus_views(rng, corpus, cfg)
                loss = loss + cfg.corpus_weight * corpus_loss(
                    model, tokenizer, views, cfg.corpus_temperature, cfg.corpus_max_tokens
                )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100.0))
        return loss.item()

    model.train()
    run_steps(
        name="MiniCLIP",
        steps=cfg.steps,
        step_fn=step_fn,
        ckpt_dir=ckpt_dir,
        modules={"clip": model, "identity_head": identity_head},
        opt=opt,
        progress=progress,
    )
    if cfg.vision_steps > 0:
        finetune_vision(
            model,
            tokenizer=tokenizer,
            images=images,
            style_idx=style_idx,
            object_idx=object_idx,
            cfg=cfg,
            seed=seed,
            device=device,
            ckpt_dir=None if ckpt_dir is None else ckpt_dir.with_name(ckpt_dir.name + "_vision"),
            progress=progress,
        )
    model.eval()
    model.save_pretrained(str(out_dir))
    (out_dir / "train_config.json").write_text(__import__("json").dumps(asdict(cfg), indent=2))
    return model


def text_anchor_loss(
    model: CLIPModel,
    tokenizer,
    text_embeds: torch.Tensor,
    style_idx: np.ndarray,
    object_idx: np.ndarray,
    labels: list[CaptionLabel],
) -> torch.Tensor:
    """Caption-to-caption contrastive term: each sampled caption against the canonical captions
    (``CANVAS_TEMPLATE``) of the batch's distinct (style, object) pairs, with the image side's soft targets.

    The canonical side is computed without gradient (a moving anchor the captions are pulled to; half the
    cost). The small vision tower learns silhouettes much more slowly than palettes and textures, so with
    the image-caption loss alone the text tower learns to ignore object words (in the first MiniCanvas,
    objects explained ~7% of the variance of the last hidden state across the canonical prompts, styles
    ~98%). This term lets the text tower separate objects from the start; the image side then aligns to it.
    """
    pairs = sorted(set(zip(style_idx.tolist(), object_idx.tolist(), strict=True)))
    ps, po = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    target = torch.from_numpy(np.stack([lab.compatible(ps, po) for lab in labels]).astype(np.float32))
    anchors = [make_prompt(CANVAS_TEMPLATE, style=STYLES[a], object=OBJECTS[b]) for a, b in pairs]
    with torch.no_grad():
        ids = tokenize(tokenizer, anchors).to(text_embeds.device)
        pooled = model.text_model(input_ids=ids).pooler_output
        anchor = F.normalize(model.text_projection(pooled).float(), dim=-1)
    return soft_clip_loss(model.logit_scale.exp() * text_embeds.float() @ anchor.T, target.to(anchor.device))


def token_identity_loss(
    head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor, eos_token_id: int
) -> torch.Tensor:
    """Cross-entropy of each prompt token's own id, read by a linear ``head`` from its last-layer row.

    CLIP ViT-L/14's last-layer rows keep their token's identity (Stable Diffusion's per-token
    cross-attention maps and word-level edits rely on it), but a small tower trained only through the
    pooled end token lets a word's own row turn into a mixture of its context: on the first MiniCanvas 2
    build the style word's last-layer row was nearest its own style's centroid for 56 % of the prompts and
    the styles explained 7 % of its variance. A 300-step fine-tune with this term (weight 0.2) raised that to
    94 % and 36 % with the other losses unchanged. Positions between the start and the end token count
    (neither of those two, nor the padding).
    """
    eot = (ids == eos_token_id).int().argmax(1)
    pos = torch.arange(ids.shape[1], device=ids.device)
    mask = (pos[None] >= 1) & (pos[None] < eot[:, None])
    return F.cross_entropy(head(hidden[mask]).float(), ids[mask])


def corpus_views(rng: np.random.Generator, corpus: list[str], cfg: ClipTrainConfig) -> list[str]:
    """Two views of ``cfg.corpus_batch_size`` random corpus texts: ``[a_1..a_B, b_1..b_B]``.

    A view is a random window of at most ``corpus_max_words`` words with each word dropped with
    probability ``corpus_word_drop`` (at least one word kept).
    """
    picks = rng.integers(len(corpus), size=cfg.corpus_batch_size)
    windows = []
    for i in picks:
        words = corpus[int(i)].split()
        start = int(rng.integers(max(1, len(words) - cfg.corpus_max_words + 1)))
        windows.append(words[start : start + cfg.corpus_max_words])

    def view(words: list[str]) -> str:
        kept = [w for w in words if rng.random() >= cfg.corpus_word_drop]
        return " ".join(kept or words[:1])

    return [view(w) for w in windows] + [view(w) for w in windows]


def corpus_loss(
    model: CLIPModel, tokenizer, views: list[str], temperature: float, max_tokens: int = 24
) -> torch.Tensor:
    """Text-text InfoNCE between two views of the same language text (SimCSE-style, symmetric).

    The world's captions use ~100 distinct words; this term trains the text tower on thousands of real
    English words (COCO captions, I2P prompts) so that every token has a direction of its own, as in CLIP.
    """
    ids = tokenize(tokenizer, views, max_length=max_tokens).to(model.device)
    emb = F.normalize(model.text_projection(model.text_model(input_ids=ids).pooler_output).float(), dim=-1)
    a, b = emb.chunk(2)
    logits = a @ b.T / temperature
    labels = torch.arange(len(a), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def soft_clip_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets. logits, target: (B text, B image); target is 1 for compatible pairs."""
    loss_t = -(F.log_softmax(logits, 1) * (target / target.sum(1, keepdim=True))).sum(1).mean()
    loss_i = -(F.log_softmax(logits.T, 1) * (target.T / target.T.sum(1, keepdim=True))).sum(1).mean()
    return 0.5 * (loss_t + loss_i)


def finetune_vision(
    model: CLIPModel,
    *,
    tokenizer,
    images: np.ndarray,
    style_idx: np.ndarray,
    object_idx: np.ndarray,
    cfg: ClipTrainConfig,
    seed: int,
    device: torch.device,
    ckpt_dir: Path | None = None,
    progress: bool = True,
) -> None:
    """Phase 2: train the vision tower (and projection) only, with the text tower frozen.

    The text tower - and so MiniSD's text encoder - is bit-identical before and after; this phase only
    sharpens the image side (object shapes are learned slower than styles).
    """
    vision = [*model.vision_model.parameters(), *model.visual_projection.parameters()]
    opt = torch.optim.AdamW(
        vision, lr=cfg.vision_lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=cfg.weight_decay
    )
    pixels_all = to_float_images(images).mul_(2).sub_(1)

    def step_fn(step: int) -> float:
        rng, _ = step_rng(seed, step, stream=7)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base_lr=cfg.vision_lr, warmup=cfg.warmup, total=cfg.vision_steps)
        idx = rng.integers(len(images), size=cfg.vision_batch_size)
        s, o = style_idx[idx], object_idx[idx]
        caps = [sample_caption(rng, int(a), int(b)) for a, b in zip(s, o, strict=True)]
        target = torch.from_numpy(np.stack([lab.compatible(s, o) for _, lab in caps]).astype(np.float32))
        with torch.no_grad(), autocast(device, cfg.precision):
            text = encode_texts(model, tokenizer, [c for c, _ in caps], device).float()
        with autocast(device, cfg.precision):
            pooled = model.vision_model(pixel_values=pixels_all[idx].to(device)).pooler_output
            img = F.normalize(model.visual_projection(pooled).float(), dim=-1)
        loss = soft_clip_loss(model.logit_scale.exp().detach() * text @ img.T, target.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vision, 1.0)
        opt.step()
        return loss.item()

    model.train()
    run_steps(
        name="MiniCLIP vision",
        steps=cfg.vision_steps,
        step_fn=step_fn,
        ckpt_dir=ckpt_dir,
        modules={"vision": model.vision_model, "proj": model.visual_projection},
        opt=opt,
        progress=progress,
    )
    model.eval()


@torch.no_grad()
def encode_texts(model: CLIPModel, tokenizer, texts: list[str], device: torch.device) -> torch.Tensor:
    """L2-normalised text embeddings (N, projection_dim)."""
    ids = tokenize(tokenizer, texts).to(device)
    pooled = model.text_model(input_ids=ids).pooler_output
    return F.normalize(model.text_projection(pooled), dim=-1)


@torch.no_grad()
def encode_images(model: CLIPModel, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """L2-normalised image embeddings (N, projection_dim) of float images (N, 3, 32, 32) in [0, 1]."""
    pooled = model.vision_model(pixel_values=(images * 2 - 1).to(device)).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)


@torch.no_grad()
def zero_shot_report(
    model: CLIPModel,
    tokenizer,
    images: torch.Tensor,
    style_idx: np.ndarray,
    object_idx: np.ndarray,
    *,
    device: torch.device,
) -> dict[str, float]:
    """Zero-shot style / object classification and text->image retrieval on images (N, 3, 32, 32) in [0, 1].

    - style accuracy: argmax over "An image in {style} style." prompts;
    - object accuracy: argmax over "A {object} image." prompts;
    - retrieval R@1: for each of the 120 ``CANVAS_TEMPLATE`` prompts, is the top-ranked image of that pair
      (gallery = all given images), averaged over prompts.
    """
    img = torch.cat([encode_images(model, images[i : i + 512], device) for i in range(0, len(images), 512)])
    ts = encode_texts(
        model, tokenizer, [make_prompt("An image in {style} style.", style=s) for s in STYLES], device
    )
    to = encode_texts(model, tokenizer, [make_prompt("A {object} image.", object=o) for o in OBJECTS], device)
    s_acc = float(((img @ ts.T).argmax(1).cpu().numpy() == style_idx).mean())
    o_acc = float(((img @ to.T).argmax(1).cpu().numpy() == object_idx).mean())
    pairs = [(s, o) for s in range(len(STYLES)) for o in range(len(OBJECTS))]
    tp = encode_texts(
        model,
        tokenizer,
        [make_prompt(CANVAS_TEMPLATE, style=STYLES[s], object=OBJECTS[o]) for s, o in pairs],
        device,
    )
    top = (tp @ img.T).argmax(1).cpu().numpy()
    hits = [(style_idx[t] == s) and (object_idx[t] == o) for t, (s, o) in zip(top, pairs, strict=True)]
    return {"zero_shot_style_acc": s_acc, "zero_shot_object_acc": o_acc, "retrieval_r1": float(np.mean(hits))}


@torch.no_grad()
def equalize_block0(text_model, factor: float) -> None:
    """Re-parametrise block 0 of a CLIP text tower so that a step of Adam moves it like a step on a
    ``factor`` times wider encoder, without changing the function it computes.

    Adam changes every weight by about ``lr`` per step, so a linear layer's output moves by about
    ``lr * fan_in * |input|``: at the same learning rate a width-256 block moves 3x less than CLIP
    ViT-L/14's width-768 one. Multiplying ``layer_norm1``/``layer_norm2`` (weight and bias) by ``factor``,
    dividing the q/k projections and ``fc1`` by it, multiplying the v bias by it and dividing ``out_proj``
    by it leaves every output identical (up to rounding) while the inputs of q, k, v, ``out_proj`` and
    ``fc1`` grow by ``factor``. ``fc2`` (behind the GELU) is unchanged.
    """
    model = text_model.text_model if hasattr(text_model, "text_model") else text_model
    block = model.encoder.layers[0]
    attn, mlp = block.self_attn, block.mlp
    for ln in (block.layer_norm1, block.layer_norm2):
        ln.weight.mul_(factor)
        ln.bias.mul_(factor)
    for lin in (attn.q_proj, attn.k_proj, mlp.fc1):
        lin.weight.div_(factor)
    attn.v_proj.bias.mul_(factor)  # v = W_v (factor * LN) + factor * b_v = factor * v
    attn.out_proj.weight.div_(factor)
