"""Tiny random components built from configs (as diffusers' own tests do), saved to disk so that the
real loaders (``from_pretrained``) are exercised. Nothing is downloaded.

The tokenizer is SD's real CLIP BPE tokenizer, rebuilt from the vocabulary that ``open-clip-torch``
ships (``bpe_simple_vocab_16e6.txt.gz``), so prompts tokenize exactly as in Stable Diffusion.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

SEED = 0
WIDTH = 32
LAYERS = 4


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (GPT-2 style)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


@lru_cache(maxsize=1)
def _clip_vocab() -> tuple[dict[str, int], list[str]]:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "open-clip-torch is needed for the real CLIP vocabulary: pip install open-clip-torch"
        )
    bpe = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(directory: Path, *, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """SD 1.x's CLIP tokenizer (vocab 49408, 77 positions, padding with <|endoftext|>), saved to ``directory``.

    ``pad_token="!"``: SD 2.x's OpenCLIP tokenizer, which pads with ``!`` (id 0).
    """
    vocab, merges = _clip_vocab()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"),
        str(directory / "merges.txt"),
        pad_token=pad_token,
        model_max_length=77,
    )
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def text_config(**overrides) -> CLIPTextConfig:
    config = dict(
        vocab_size=49408,
        hidden_size=WIDTH,
        intermediate_size=37,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=WIDTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act="quick_gelu",
    )
    config.update(overrides)
    return CLIPTextConfig(**config)


def text_encoder(seed: int = SEED, *, projection: bool = False, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(text_config(**overrides)).eval()


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def _sd_unet(cross_attention_dim: int = WIDTH, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    config = dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    config.update(overrides)
    return UNet2DConditionModel(**config)


def _save(pipe, path: Path, dtype: torch.dtype | None) -> Path:
    """``save_pretrained`` at ``path``; ``dtype=torch.float16`` stores every model as fp16 (as most
    published checkpoints are)."""
    if dtype is not None:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(str(path))
    return path


def sd_pipeline_dir(path: Path, *, dtype: torch.dtype | None = None, version: int = 1) -> Path:
    """A tiny Stable Diffusion pipeline saved with ``save_pretrained`` at ``path``.

    ``version=2``: SD 2.x's differences that matter here: the tokenizer pads with ``!``, the encoder
    uses GELU, and the scheduler predicts v (``prediction_type="v_prediction"``).
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sd2 = version == 2
    tokenizer = clip_tokenizer(
        path.parent / f".{path.name}-tokenizer", pad_token="!" if sd2 else "<|endoftext|>"
    )
    encoder = text_encoder(hidden_act="gelu", pad_token_id=0) if sd2 else text_encoder()
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=_sd_unet(),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            steps_offset=1,
            prediction_type="v_prediction" if sd2 else "epsilon",
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipe, path, dtype)


def sdxl_pipeline_dir(path: Path, *, dtype: torch.dtype | None = None) -> Path:
    """A tiny SDXL pipeline: two CLIP encoders (the second with projection) and a text-time U-Net."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = clip_tokenizer(path.parent / f".{path.name}-tokenizer")
    unet = _sd_unet(
        cross_attention_dim=2 * WIDTH,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + WIDTH,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=text_encoder(1),
        text_encoder_2=text_encoder(2, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    )
    return _save(pipe, path, dtype)


def _t5(path: Path):
    """A tiny T5 encoder and a T5 tokenizer with a small unigram vocabulary trained here."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    torch.manual_seed(SEED)
    words = "a photo of cat dog painting style van gogh tree house person nude red blue green the in by an".split()
    spm = SentencePieceUnigramTokenizer()
    spm.train_from_iterator(
        [" ".join(words)] * 20, vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tokenizer = T5TokenizerFast(
        tokenizer_object=spm._tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )
    tokenizer.model_max_length = 32
    encoder = T5EncoderModel(
        T5Config(
            vocab_size=64,
            d_model=WIDTH,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    return encoder, tokenizer


def sd3_pipeline_dir(path: Path, *, dtype: torch.dtype | None = None, t5: bool = True) -> Path:
    """A tiny SD3 pipeline: two CLIP encoders with projection, a T5 encoder (``t5=False``: none, as
    SD3 is often run), an MMDiT transformer."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tokenizer = clip_tokenizer(path.parent / f".{path.name}-tokenizer")
    t5_encoder, t5_tokenizer = _t5(path) if t5 else (None, None)
    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=WIDTH,
        joint_attention_dim=WIDTH,
        pooled_projection_dim=2 * WIDTH,
        out_channels=4,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder(1, projection=True),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder(2, projection=True),
        tokenizer_2=tokenizer,
        text_encoder_3=t5_encoder,
        tokenizer_3=t5_tokenizer,
    )
    return _save(pipe, path, dtype)


def flux_pipeline_dir(path: Path, *, dtype: torch.dtype | None = None) -> Path:
    """A tiny Flux pipeline: one CLIP encoder, a T5 encoder and a Flux transformer."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = clip_tokenizer(path.parent / f".{path.name}-tokenizer")
    t5, t5_tokenizer = _t5(path)
    torch.manual_seed(SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        pooled_projection_dim=WIDTH,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder(1),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    return _save(pipe, path, dtype)
