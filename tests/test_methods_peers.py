"""Peer methods (UCE, ESD-x/-u, DiffQuickFix, naive fine-tuning) on a tiny random SD pipeline.

The proofs: for each peer the authors' computation is restated here, independently of hirm's code,
from their paper's equations and scripts (UCE: both generations of the script; DiffQuickFix: the
notebook; ESD: CompVis ``train-esd.py``), and hirm's patch is checked against it (keys, values,
positions, layers). Then each method's common promises: only its tensors change, determinism, exact
save/load, the caller's model untouched, the public API, HiRM + UCE composing as two disjoint patches."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace

import pytest
import torch

import hirm
from hirm.core.config import Concept, HiRMConfig, ReadingPoint
from hirm.core.diffquickfix import DiffQuickFixConfig, out_proj_inputs, slot_position
from hirm.core.encoder import read_representation, tokenize
from hirm.core.esd import ESDConfig, ESDUConfig, ESDXConfig, esd_target
from hirm.core.esd import trainable_names as esd_names
from hirm.core.hirm import trainable_names as hirm_names
from hirm.core.kv_proj import KVProjConfig
from hirm.core.naive import NaiveConfig
from hirm.core.patch import Patch, apply_patches, component_parameters, make_patch
from hirm.core.uce import UCEConfig, prompt_embeddings

CAT = [Concept("cat")]
OUT_PROJ0 = "text_encoder/encoder.layers.0.self_attn.out_proj.weight"
EOT = 49407  # CLIP's end-of-text token (also its padding)

#: Small configs: every method in well under a second on the tiny pipeline.
FAST = {
    "uce": UCEConfig(preserve=("dog",)),
    "esd-x": ESDXConfig(steps=2, ddim_steps=4),
    "esd-u": ESDUConfig(steps=2, ddim_steps=4),
    "diffquickfix": DiffQuickFixConfig(templates=("a photo of {concept}", "{concept}")),
    "naive": NaiveConfig(steps=3, lr=1e-3),
    "kv-proj": KVProjConfig(rank=4, preserve=("dog",)),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(sd_dir):
    return hirm.load_model(sd_dir)


def _erase(model, name, concepts=CAT, config=None):
    return hirm.get_method(name).erase(
        model, concepts, FAST[name] if config is None else config, progress=False
    )


def _state(model) -> dict[str, torch.Tensor]:
    return {
        f"{comp}/{name}": p.detach().clone()
        for comp in ("text_encoder", "unet")
        for name, p in component_parameters(model.component(comp)).items()
    }


def _with_patch(module, patch: Patch, component: str):
    """A copy of ``module`` with ``patch`` applied (the fixture's module stays as it is)."""
    return apply_patches(copy.deepcopy(module), [patch], component=component)


def _final(encoder, tokenizer, prompts):
    with torch.no_grad():
        return read_representation(encoder, tokenize(tokenizer, prompts), ReadingPoint(site="final")).float()


def _close(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    torch.testing.assert_close(
        got.double(), expected.double(), rtol=rel, atol=rel * expected.abs().max().item()
    )


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_the_peer_methods_with_their_defaults():
    methods = hirm.methods()
    assert {"uce", "esd-x", "esd-u", "diffquickfix", "naive"} <= set(methods)
    assert methods["esd-x"].config_cls().variant == "esd-x"
    assert methods["esd-u"].config_cls().variant == "esd-u"
    esd = ESDConfig()
    assert (esd.steps, esd.lr, esd.negative_guidance, esd.start_guidance, esd.ddim_steps) == (
        1000,
        1e-5,
        1.0,
        3.0,
        50,
    )
    uce = UCEConfig()
    assert (uce.tokens, uce.erase_scale, uce.preserve_scale, uce.lamb, uce.preserve) == (
        "paper",
        1.0,
        None,
        0.5,
        (),
    )
    assert (uce.resolved_preserve_scale(), UCEConfig(preserve=("a",) * 3).resolved_preserve_scale()) == (
        1.0,
        0.25,
    )
    assert UCEConfig(preserve=("a",) * 20).resolved_preserve_scale() == 0.1
    assert UCEConfig(tokens="last", preserve=("a",) * 3).resolved_preserve_scale() == 1.0
    dqf = DiffQuickFixConfig()
    assert (dqf.lam, dqf.guide, dqf.use_eos, dqf.value, dqf.layer) == (0.01, "", True, "notebook", 0)
    assert dqf.templates == (
        "{concept}",
        "A photo of {concept}",
        "An image of {concept}",
        "A picture of {concept}",
    )
    naive = NaiveConfig().hirm_config()
    assert naive.read == ReadingPoint(site="final") and naive.trainable == "first-attn"
    assert NaiveConfig().hirm_config("sdxl").read == ReadingPoint(layer=-2, site="hidden")
    assert (naive.betas, naive.eps, naive.weight_decay) == (
        HiRMConfig().betas,
        HiRMConfig().eps,
        HiRMConfig().weight_decay,
    )


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: UCEConfig(lamb=0), "UCEConfig.lamb"),
        (lambda: UCEConfig(tokens="some"), "UCEConfig.tokens"),
        (lambda: UCEConfig(tokens="all"), "removed"),
        (lambda: UCEConfig(preserve="dog"), "UCEConfig.preserve"),
        (lambda: UCEConfig(expand_prompts="true"), "UCEConfig.expand_prompts"),
        (lambda: UCEConfig(preserve_scale=float("nan")), "UCEConfig.preserve_scale"),
        (lambda: ESDConfig(steps=0), "ESDConfig.steps"),
        (lambda: ESDConfig(steps=2.5), "ESDConfig.steps"),
        (lambda: ESDConfig(variant="esd-z"), "ESDConfig.variant"),
        (lambda: ESDConfig(seed=-1), "ESDConfig.seed"),
        (lambda: ESDXConfig(variant="esd-u"), "ESDXConfig"),
        (lambda: ESDConfig(preserve="dog"), "ESDConfig.preserve"),
        (lambda: ESDConfig(preserve=("dog",), preserve_weight=0), "ESDConfig.preserve_weight"),
        (lambda: ESDConfig(preserve_weight=2.0), "ESDConfig.preserve_weight"),
        (lambda: ESDConfig(preserve_nearest=1), "ESDConfig.preserve_nearest"),
        (lambda: ESDConfig(preserve=("dog",), preserve_nearest=-1), "ESDConfig.preserve_nearest"),
        (lambda: DiffQuickFixConfig(lam=0), "DiffQuickFixConfig.lam"),
        (lambda: DiffQuickFixConfig(templates=("no slot",)), "DiffQuickFixConfig.templates[0]"),
        (lambda: DiffQuickFixConfig(templates=("{concept} {concept}",)), "exactly once"),
        (lambda: DiffQuickFixConfig(value="bias"), "DiffQuickFixConfig.value"),
        (lambda: DiffQuickFixConfig(use_eos=1), "DiffQuickFixConfig.use_eos"),
        (lambda: NaiveConfig(steps=0), "NaiveConfig.steps"),
        (lambda: NaiveConfig(anchor="  "), "NaiveConfig.anchor"),
        (lambda: NaiveConfig(betas=(0.9, 1.0)), "NaiveConfig.betas[1]"),
    ],
)
def test_bad_configs_fail_early_naming_the_field(make, field):
    with pytest.raises((ValueError, TypeError), match=re.escape(field)):
        make()


def test_esd_method_name_and_variant_must_agree(model):
    with pytest.raises(ValueError, match="variant"):
        hirm.get_method("esd-x").erase(model, CAT, ESDConfig(variant="esd-u", steps=1))


# -------------------------------------------------------------------------------------- common promises


@pytest.mark.parametrize("name", list(FAST))
def test_deterministic_exact_round_trip_and_caller_untouched(model, name, tmp_path):
    before = _state(model)
    first, second = _erase(model, name), _erase(model, name)
    assert _state(model).keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items()), (
        "erase modified the caller's model"
    )
    assert first.tensors.keys() == second.tensors.keys()
    assert all(torch.equal(first.tensors[k], second.tensors[k]) for k in first.tensors)
    assert any(not torch.equal(v, before[k]) for k, v in first.tensors.items()), "nothing changed"
    loaded = Patch.load(first.save(tmp_path / f"{name}.safetensors"))
    assert loaded.tensors.keys() == first.tensors.keys()
    assert all(torch.equal(loaded.tensors[k], first.tensors[k]) for k in first.tensors)
    assert loaded.metadata["method"] == name
    assert loaded.metadata["config"] == json.loads(
        json.dumps(FAST[name].to_dict())
    )  # tuples are lists in JSON
    assert loaded.metadata["seconds"] > 0


@pytest.mark.parametrize("name", list(FAST))
def test_public_api(sd_dir, name):
    config = FAST[name] if name.startswith("esd") else None  # ESD's published 1000 steps are too long here
    patch = hirm.erase(sd_dir, ["cat"], method=name, config=config, progress=False)
    assert patch.metadata["method"] == name and patch.metadata["concepts"][0]["text"] == "cat"
    pipe = hirm.load_model(sd_dir).pipeline()
    hirm.apply_patch(pipe, patch)  # applies to the unpatched base (fingerprints match)


# ------------------------------------------------------------------------------------------------- UCE


def _attn2_kv(unet) -> set[str]:
    return {
        f"unet/{name}.{proj}.weight"
        for name, _ in unet.named_modules()
        if name.endswith("attn2")
        for proj in ("to_k", "to_v")
    }


def _embed(model, text):
    """A prompt's ``last_hidden_state`` (77, D) in float64 and its ``attention_mask.sum() - 2``."""
    tok = model.tokenizer()
    t = tok(
        [text], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model.text_encoder()(t.input_ids)[0][0].double()
    return hidden, int(t.attention_mask[0].sum()) - 2


def _authors_uce(model, erased, guides, preserve, *, script, preserve_scale, erase_scale=1.0, lamb=0.5):
    """UCE as the authors' scripts compute it (eq. 7 with their rows), for every attn2 to_k / to_v.

    ``script="paper"``: ``train_erase.py`` — per pair the rows from each last token to the end, the
    longer one cut by ``farthest - final_token_idx`` at the end; every preserved prompt over all 77 rows
    (the caller passes ``''`` in ``preserve`` as the script does). ``script="last"``: ``uce_sd_erase.py``
    — the last-token row of every prompt."""
    params = component_parameters(model.component("unet"))
    pairs = []
    for old, new in zip(erased, guides, strict=True):
        (h_o, i_o), (h_n, i_n) = _embed(model, old), _embed(model, new)
        if script == "paper":
            far = max(i_o, i_n)
            pairs.append((h_o[i_o : len(h_o) - max(0, far - i_o)], h_n[i_n : len(h_n) - max(0, far - i_n)]))
        else:
            pairs.append((h_o[i_o : i_o + 1], h_n[i_n : i_n + 1]))
    kept = []
    for text in preserve:
        h, i = _embed(model, text)
        kept.append(h if script == "paper" else h[i : i + 1])
    out = {}
    for key in _attn2_kv(model.component("unet")):
        w = params[key.split("/", 1)[1]].detach().double()
        mat1, mat2 = lamb * w, lamb * torch.eye(w.shape[1], dtype=torch.float64)
        for c, g in pairs:
            for c_row, g_row in zip(c, g, strict=True):
                mat1 += erase_scale * torch.outer(w @ g_row, c_row)  # v* c^T with v* = W c*
                mat2 += erase_scale * torch.outer(c_row, c_row)
        for c in kept:
            for row in c:
                mat1 += preserve_scale * torch.outer(w @ row, row)
                mat2 += preserve_scale * torch.outer(row, row)
        out[key] = mat1 @ torch.linalg.inv(mat2)
    return out


def test_clip_reads_the_original_scripts_space_guide_as_the_empty_prompt(model):
    tok = model.tokenizer()
    assert tok(" ")["input_ids"] == tok("")["input_ids"] == [49406, EOT]


@pytest.mark.parametrize(
    ("concepts", "config", "erased", "guides", "preserve", "scale"),
    [
        # paper defaults: guide '' (the script's ' '), '' always preserved, scale max(0.1, 1/2)
        ([Concept("van gogh", "style")], UCEConfig(preserve=("dog",)), ["van gogh"], [""], ["", "dog"], 0.5),
        # a guide longer than the concept: rows aligned at the last tokens, the guide's tail cut
        ([Concept("cat")], UCEConfig(guide="a red dog"), ["cat"], ["a red dog"], [""], 1.0),
        # two concepts, explicit scale
        ([Concept("cat"), Concept("a tall tree")], UCEConfig(guide="bird", preserve_scale=0.3),
         ["cat", "a tall tree"], ["bird", "bird"], [""], 0.3),
        # the rewritten script: last tokens, guide "art" for styles, "" for objects, no implicit ''
        ([Concept("van gogh", "style"), Concept("cat")], UCEConfig(tokens="last", preserve=("dog", "a house")),
         ["van gogh", "cat"], ["art", ""], ["dog", "a house"], 1.0),
        # the rewritten script's expand_prompts: five templates each, the guide in the same template
        ([Concept("cat")], UCEConfig(tokens="last", expand_prompts=True),
         ["cat", "image of cat", "photo of cat", "portrait of cat", "picture of cat", "painting of cat"],
         ["", "image of ", "photo of ", "portrait of ", "picture of ", "painting of "], [], 1.0),
    ],
)  # fmt: skip
def test_uce_equals_the_authors_closed_form(model, concepts, config, erased, guides, preserve, scale):
    patch = _erase(model, "uce", concepts, config)
    expected = _authors_uce(model, erased, guides, preserve, script=config.tokens, preserve_scale=scale)
    assert patch.tensors.keys() == expected.keys() == _attn2_kv(model.component("unet"))
    for key, value in expected.items():
        _close(patch.tensors[key], value, rel=1e-4)
    if config.tokens == "paper":  # 77 - max(last tokens) rows per pair
        rows = sum(77 - max(_embed(model, e)[1], _embed(model, g)[1]) for e, g in zip(erased, guides))
        assert patch.metadata["rows"] == {"erase": rows, "preserve": 77 * len(preserve)}


def test_uce_edits_exactly_every_cross_attention_key_and_value(model):
    unet = model.component("unet")
    assert _erase(model, "uce").tensors.keys() == _attn2_kv(unet)
    values_only = _erase(model, "uce", config=UCEConfig(edit_keys=False))
    assert values_only.tensors.keys() == {k for k in _attn2_kv(unet) if ".to_v." in k}


def test_uce_default_guides_per_script(model):
    both = [Concept("van gogh", kind="style"), Concept("cat")]
    assert _erase(model, "uce", both, UCEConfig()).metadata["guides"] == ["", ""]
    assert _erase(model, "uce", both, UCEConfig(tokens="last")).metadata["guides"] == ["art", ""]
    assert _erase(model, "uce", config=UCEConfig(guide="dog")).metadata["guides"] == ["dog"]


# ------------------------------------------------------------------------------------------------- ESD


def _compvis_name(diffusers_name: str) -> str:
    """A diffusers SD U-Net parameter name with its top-level module renamed as in CompVis (the rest of
    the name does not matter for the rules below, and keeps e.g. ``time_emb_proj`` != ``time_embed``)."""
    top, _, rest = diffusers_name.partition(".")
    compvis = {"conv_in": "input_blocks.0.0", "time_embedding": "time_embed", "down_blocks": "input_blocks",
               "mid_block": "middle_block", "up_blocks": "output_blocks", "conv_norm_out": "out.0",
               "conv_out": "out.2"}[top]  # fmt: skip
    return f"{compvis}.{rest}"


def test_esd_trains_exactly_compvis_xattn_and_noxattn(model):
    """train-esd.py: noxattn skips ``name.startswith('out.') or 'attn2' in name or 'time_embed' in name``;
    xattn takes ``'attn2' in name``. Applied to CompVis-named parameters of the tiny U-Net."""
    unet = model.component("unet")
    every = list(component_parameters(unet))
    cv = {n: _compvis_name(n) for n in every}
    noxattn = {
        n for n in every if not (cv[n].startswith("out.") or "attn2" in cv[n] or "time_embed" in cv[n])
    }
    xattn = {n for n in every if "attn2" in cv[n]}
    assert {n.split(".")[0] for n in set(every) - noxattn - xattn} == {
        "time_embedding",
        "conv_norm_out",
        "conv_out",
    }
    assert any("time_emb_proj" in n for n in noxattn)  # the residual blocks' time projections do train
    assert set(esd_names(unet, "esd-u")) == noxattn
    assert set(esd_names(unet, "esd-x")) == xattn
    assert set(_erase(model, "esd-x").tensors) == {f"unet/{n}" for n in xattn}
    assert set(_erase(model, "esd-u").tensors) == {f"unet/{n}" for n in noxattn}


def _latent_by_hand(unet, scheduler, gen, emb_0, emb_c, config):
    """Restate ESD's training latent: t_enc, then a start noise from ``gen``, then t_enc DDIM steps with
    classifier-free guidance (the start guidance; unconditional first in one batch, as CompVis' DDIM
    sampler does) by ``unet`` on ``emb_c``. Returns x_t and t_enc."""
    t_enc = int(torch.randint(config.ddim_steps, (1,), generator=gen))
    x = torch.randn((1, 4, 8, 8), generator=gen) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps[:t_enc]:
            uncond, cond = unet(
                torch.cat([x, x]), t, encoder_hidden_states=torch.cat([emb_0, emb_c])
            ).sample.chunk(2)
            x = scheduler.step(uncond + config.start_guidance * (cond - uncond), t, x).prev_sample
    return x, t_enc


def _esd_step(model, config: ESDConfig, gen: torch.Generator, current=None, near=(), out=None):
    """Restate one ESD step: the latent x_t sampled with DDIM + CFG (start guidance) on the concept by the
    U-Net being trained (``current``; default the original) from the draws of the seeded generator, the
    loss ||eps(x_t, c, t) - [eps*(x_t, t) - eta (eps*(x_t, c, t) - eps*(x_t, t))]||^2 (eq. 4); with a
    preserve set (ours) one more draw picks a preserve prompt p and ``preserve_weight`` ||eps(x_t, p, t) -
    eps*(x_t, p, t)||^2 is added; ``near`` (ours, preserve_nearest): the same term's mean over those
    preserve prompts, at the same x_t, added with the same weight (its value goes to ``out["near"]``).
    Returns the loss, the retain term (or None) and the gradients."""
    from diffusers import DDIMScheduler

    unet = model.component("unet")
    student = copy.deepcopy(unet if current is None else current).requires_grad_(True)
    hidden, _ = prompt_embeddings(model.text_encoder(), model.tokenizer(), ["", "cat", *config.preserve])
    emb_0, emb_c, emb_keep = hidden[:1], hidden[1:2], hidden[2:]
    scheduler = DDIMScheduler.from_config(model.component("scheduler").config)
    scheduler.set_timesteps(config.ddim_steps)
    torch.randint(1, (1,), generator=gen)  # which concept (one here)
    x, t_enc = _latent_by_hand(student, scheduler, gen, emb_0, emb_c, config)
    with torch.no_grad():
        t = scheduler.timesteps[t_enc]
        e_0, e_p = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([emb_0, emb_c])).sample.chunk(2)
    loss = torch.nn.functional.mse_loss(
        student(x, t, encoder_hidden_states=emb_c).sample, e_0 - config.negative_guidance * (e_p - e_0)
    )
    retain = None
    if config.preserve:
        j = int(torch.randint(len(config.preserve), (1,), generator=gen))
        with torch.no_grad():
            keep = unet(x, t, encoder_hidden_states=emb_keep[j : j + 1]).sample
        retain = torch.nn.functional.mse_loss(
            student(x, t, encoder_hidden_states=emb_keep[j : j + 1]).sample, keep
        )
        loss = loss + config.preserve_weight * retain
    if near:
        rows = emb_keep[list(near)]
        xs = x.expand(len(near), -1, -1, -1)
        with torch.no_grad():
            keep = unet(xs, t, encoder_hidden_states=rows).sample
        term = torch.nn.functional.mse_loss(student(xs, t, encoder_hidden_states=rows).sample, keep)
        out["near"] = term.item()
        loss = loss + config.preserve_weight * term
    loss.backward()
    return loss.item(), None if retain is None else retain.item(), dict(student.named_parameters())


def _check_adam_first_step(model, patch, config, grads) -> None:
    """Adam's first update p - lr g / (|g| + eps) on the patch's tensors."""
    unet = model.component("unet")
    for key, value in patch.tensors.items():
        name = key.split("/", 1)[1]
        p, g = component_parameters(unet)[name].detach(), grads[name].grad
        # Adam's first step is lr * sign(g) wherever |g| >> eps; near-zero gradients are rounding-sensitive.
        step = (p - value) / config.lr
        assert step.abs().max() <= 1 + 1e-3
        clear = g.abs() > 1e-4 * g.abs().max()
        _close(step[clear], (g / (g.abs() + 1e-8))[clear], rel=1e-3)


@pytest.mark.parametrize("variant", ["esd-x", "esd-u"])
def test_esd_first_step_is_adam_on_the_papers_loss(model, variant):
    config = ESDConfig(variant=variant, steps=1, lr=1e-3, ddim_steps=4, negative_guidance=1.5, seed=3)
    patch = _erase(model, variant, config=config)
    loss, retain, grads = _esd_step(model, config, torch.Generator().manual_seed(config.seed))
    assert retain is None and "retain_losses" not in patch.metadata
    assert patch.metadata["losses"]["unet"][0] == pytest.approx(loss, rel=1e-4)
    _check_adam_first_step(model, patch, config, grads)


def test_esd_preserve_set_adds_the_retain_term_and_leaves_the_authors_esd_as_it_was(model):
    """Ours: the retain term is 0 at the first step (the trained U-Net is the original) and at the second
    it is the restated ||eps(x_t, p, t) - eps*(x_t, p, t)||^2 of the once-updated U-Net, added to ESD's
    loss with its weight; the first update is Adam's on the sum."""
    config = ESDUConfig(
        steps=2, lr=1e-3, ddim_steps=4, negative_guidance=1.5, seed=3, preserve=("dog", "a red car"),
        preserve_weight=2.5,
    )  # fmt: skip
    first = _erase(model, "esd-u", config=replace(config, steps=1))
    patch = _erase(model, "esd-u", config=config)
    gen = torch.Generator().manual_seed(config.seed)
    loss, retain, grads = _esd_step(model, config, gen)
    assert retain == 0.0 and patch.metadata["retain_losses"]["unet"][0] == 0.0
    assert patch.metadata["losses"]["unet"][0] == pytest.approx(loss, rel=1e-4)
    _check_adam_first_step(model, first, config, grads)
    loss, retain, _ = _esd_step(
        model, config, gen, current=_with_patch(model.component("unet"), first, "unet")
    )
    assert retain is not None and retain > 0
    assert patch.metadata["retain_losses"]["unet"][1] == pytest.approx(retain, rel=1e-3)
    assert patch.metadata["losses"]["unet"][1] == pytest.approx(loss, rel=1e-3)
    with pytest.raises(ValueError, match="both erased and preserved"):
        _erase(model, "esd-u", config=replace(config, preserve=("cat", "dog")))
    # without a preserve set: the record (and so batched ESD's cache keys) has no trace of the option
    assert "preserve" not in ESDUConfig().to_dict() and config.to_dict()["preserve"] == ("dog", "a red car")


def _nearest_by_hand(model, config: ESDConfig) -> list[int]:
    """Restate the preserve_nearest ranking: a generator of its own seeded with the config's seed, per probe
    a t_enc and a start noise, x_t sampled by the original U-Net with DDIM + CFG (start guidance), each
    preserve prompt's mean squared distance to the concept's noise prediction summed over the probes."""
    from diffusers import DDIMScheduler

    from hirm.core.esd import NEAREST_PROBES

    unet = model.component("unet")
    hidden, _ = prompt_embeddings(model.text_encoder(), model.tokenizer(), ["", "cat", *config.preserve])
    emb_0, emb_c, emb_keep = hidden[:1], hidden[1:2], hidden[2:]
    scheduler = DDIMScheduler.from_config(model.component("scheduler").config)
    scheduler.set_timesteps(config.ddim_steps)
    gen = torch.Generator().manual_seed(config.seed)
    total = [0.0] * len(config.preserve)
    with torch.no_grad():
        for _ in range(NEAREST_PROBES):
            x, t_enc = _latent_by_hand(unet, scheduler, gen, emb_0, emb_c, config)
            t = scheduler.timesteps[t_enc]
            eps_c = unet(x, t, encoder_hidden_states=emb_c).sample
            for j in range(len(config.preserve)):
                eps_p = unet(x, t, encoder_hidden_states=emb_keep[j : j + 1]).sample
                total[j] += float(((eps_p - eps_c) ** 2).mean())
    return sorted(range(len(total)), key=lambda j: total[j])[: config.preserve_nearest]


def test_esd_preserve_nearest_keeps_the_concepts_nearest_prompts_every_step(model):
    """Ours: the ranking restated by hand; at the first step the term is 0 (the trained U-Net is the
    original) and the loss is the uniform-retain run's; at the second it is the restated mean retain term
    on the nearest prompts, added with the preserve weight; the random stream is the one without it."""
    preserve = ("dog", "a red car", "a cat", "tree", "a photo of a house")
    config = ESDUConfig(
        steps=2, lr=1e-3, ddim_steps=4, negative_guidance=1.5, seed=3, preserve=preserve, preserve_weight=1.5,
        preserve_nearest=2,
    )  # fmt: skip
    near = _nearest_by_hand(model, config)
    patch = _erase(model, "esd-u", config=config)
    assert patch.metadata["nearest"] == {"cat": [preserve[j] for j in near]}
    first = _erase(model, "esd-u", config=replace(config, steps=1))
    uniform = _erase(model, "esd-u", config=replace(config, steps=1, preserve_nearest=0))
    assert patch.metadata["retain_nearest_losses"]["unet"][0] == 0.0
    assert first.metadata["losses"] == uniform.metadata["losses"]
    gen = torch.Generator().manual_seed(config.seed)
    found: dict[str, float] = {}
    _esd_step(model, config, gen, near=near, out=found)
    assert found["near"] == 0.0
    loss, retain, _ = _esd_step(
        model, config, gen, current=_with_patch(model.component("unet"), first, "unet"), near=near, out=found
    )
    assert found["near"] > 0
    assert patch.metadata["retain_nearest_losses"]["unet"][1] == pytest.approx(found["near"], rel=1e-3)
    assert patch.metadata["retain_losses"]["unet"][1] == pytest.approx(retain, rel=1e-3)
    assert patch.metadata["losses"]["unet"][1] == pytest.approx(loss, rel=1e-3)
    # off: the record has no trace of the option; more than the preserve set holds is refused
    assert "preserve_nearest" not in replace(config, preserve_nearest=0).to_dict()
    assert config.to_dict()["preserve_nearest"] == 2
    with pytest.raises(ValueError, match="ESDUConfig.preserve_nearest is 6 but the preserve set has 5"):
        replace(config, preserve_nearest=6)


def test_esd_nearest_at_their_own_latents_uses_a_bank_sampled_with_each_prompt(model):
    """Ours (nearest_latents="own"): the bank restated (a generator seeded with seed + 1, per nearest
    prompt NEAREST_BANK draws of t_enc and noise, x_t sampled by the original U-Net with the prompt in the
    concept's place), then one entry per prompt drawn from the same generator each step; the second
    step's term is the restated mean retain term there, at each entry's own timestep."""
    from diffusers import DDIMScheduler

    from hirm.core.esd import NEAREST_BANK

    preserve = ("dog", "a red car", "a cat", "tree")
    config = ESDUConfig(
        steps=2, lr=1e-3, ddim_steps=4, negative_guidance=1.5, seed=3, preserve=preserve, preserve_nearest=2,
        nearest_latents="own",
    )  # fmt: skip
    near = _nearest_by_hand(model, config)
    patch = _erase(model, "esd-u", config=config)
    first = _erase(model, "esd-u", config=replace(config, steps=1))
    unet = model.component("unet")
    hidden, _ = prompt_embeddings(model.text_encoder(), model.tokenizer(), ["", *preserve])
    emb_0, emb_near = hidden[:1], hidden[1:][near]
    scheduler = DDIMScheduler.from_config(model.component("scheduler").config)
    scheduler.set_timesteps(config.ddim_steps)
    gen = torch.Generator().manual_seed(config.seed + 1)
    bank, steps = [], []
    for p in range(len(near)):
        for _ in range(NEAREST_BANK):
            x, t_enc = _latent_by_hand(unet, scheduler, gen, emb_0, emb_near[p : p + 1], config)
            bank.append(x)
            steps.append(t_enc)
    torch.randint(NEAREST_BANK, (len(near),), generator=gen)  # the first step's entries
    b = torch.randint(NEAREST_BANK, (len(near),), generator=gen)
    xs = torch.cat([bank[p * NEAREST_BANK + int(b[p])] for p in range(len(near))])
    ts = scheduler.timesteps[torch.tensor([steps[p * NEAREST_BANK + int(b[p])] for p in range(len(near))])]
    current = _with_patch(unet, first, "unet")
    with torch.no_grad():
        term = torch.nn.functional.mse_loss(
            current(xs, ts, encoder_hidden_states=emb_near).sample,
            unet(xs, ts, encoder_hidden_states=emb_near).sample,
        )
    assert patch.metadata["retain_nearest_losses"]["unet"][0] == 0.0
    assert patch.metadata["retain_nearest_losses"]["unet"][1] == pytest.approx(term.item(), rel=1e-3)
    # the concept's own random stream is untouched: the first step's ESD loss is the uniform-retain run's
    uniform = _erase(
        model, "esd-u", config=replace(config, steps=1, preserve_nearest=0, nearest_latents="concept")
    )
    assert first.metadata["losses"] == uniform.metadata["losses"]
    assert "nearest_latents" not in replace(config, nearest_latents="concept").to_dict()
    with pytest.raises(ValueError, match="nearest_latents is set without preserve_nearest"):
        ESDUConfig(preserve=preserve, nearest_latents="own")


def test_esd_trained_on_another_patch_trains_with_it_in_place_and_targets_from_the_original(model):
    """Ours (erase's trained_on): with a cross-attention patch in place on the trained copy, the first step
    is the restated ESD step whose x_t and trained predictions come from the patched U-Net and whose target
    from the original; the patch returned holds only ESD-u's tensors and names what it was trained on; a
    patch of tensors ESD trains, or of another component, is refused."""
    from hirm.core.esd import erase as esd_erase

    unet = model.component("unet")
    params = component_parameters(unet)
    keys = [n for n in params if "attn2" in n.split(".") and n.endswith(("to_k.weight", "to_v.weight"))]
    on = make_patch(
        method="test-kv", originals={f"unet/{n}": params[n].detach() for n in keys},
        edited={f"unet/{n}": params[n].detach() * 0.5 for n in keys}, config={}, concepts=[], base=model.base_info(),
    )  # fmt: skip
    config = ESDUConfig(steps=1, lr=1e-3, ddim_steps=4, negative_guidance=1.5, seed=3)
    before = _state(model)
    patch = esd_erase(model, CAT, config, progress=False, trained_on=on)
    loss, _, grads = _esd_step(
        model, config, torch.Generator().manual_seed(config.seed), current=_with_patch(unet, on, "unet")
    )
    assert patch.metadata["losses"]["unet"][0] == pytest.approx(loss, rel=1e-4)
    _check_adam_first_step(model, patch, config, grads)
    assert not set(patch.tensors) & set(on.tensors)
    assert patch.metadata["trained_on"] == {"method": "test-kv", "digest": on.digest}
    alone = esd_erase(model, CAT, config, progress=False)
    assert alone.metadata["losses"] != patch.metadata["losses"]  # the patch in place changed the step
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())  # the caller's model untouched
    with pytest.raises(ValueError, match="tensors that ESD trains"):
        esd_erase(model, CAT, ESDXConfig(steps=1, ddim_steps=4), progress=False, trained_on=on)
    name, weight = next(iter(component_parameters(model.component("text_encoder")).items()))
    encoder_patch = make_patch(
        method="test-te", originals={f"text_encoder/{name}": weight.detach()},
        edited={f"text_encoder/{name}": weight.detach() * 0.5}, config={}, concepts=[], base=model.base_info(),
    )  # fmt: skip
    with pytest.raises(ValueError, match="not only the U-Net"):
        esd_erase(model, CAT, config, progress=False, trained_on=encoder_patch)


def _stack_patch(model) -> Patch:
    """A stand-in for the parts that ship with ESD's: a text-encoder tensor and the cross-attention's keys
    and values, halved."""
    unet, encoder = model.component("unet"), model.text_encoder()
    params = component_parameters(unet)
    kv = [n for n in params if "attn2" in n.split(".") and n.endswith(("to_k.weight", "to_v.weight"))]
    name = "encoder.layers.0.mlp.fc1.weight"
    weight = component_parameters(encoder)[name].detach()
    originals = {f"unet/{n}": params[n].detach() for n in kv} | {f"text_encoder/{name}": weight}
    return make_patch(
        method="test-stack", originals=originals, edited={k: v * 0.5 for k, v in originals.items()},
        config={}, concepts=[], base=model.base_info(),
    )  # fmt: skip


def _shipped_step_by_hand(model, config: ESDConfig, through: Patch) -> dict:
    """Restate ESD's first step with erase's ``retain_through``: ESD's own term and x_t from the trained
    U-Net alone, the drawn kept prompt's retain term through the patched encoder and U-Net and, with
    ``config.adversary_through``, the adversary ("cat"'s word embedding) encoded by the patched encoder and
    read by the patched U-Net, its recovery gradient taken at this first step. Backpropagates the loss;
    returns the terms, the trained copy (gradients of every forward summed on it) and the attacker's start
    and gradient."""
    from diffusers import DDIMScheduler

    from hirm.core.encoder import text_transformer

    unet, encoder = model.component("unet"), model.text_encoder()
    gen = torch.Generator().manual_seed(config.seed)
    student = copy.deepcopy(unet).requires_grad_(True)
    hidden, _ = prompt_embeddings(encoder, model.tokenizer(), ["", "cat", *config.preserve])
    emb_0, emb_c, emb_keep = hidden[:1], hidden[1:2], hidden[2:]
    shipped_encoder = _with_patch(encoder, through, "text_encoder")
    shipped_keep = prompt_embeddings(shipped_encoder, model.tokenizer(), list(config.preserve))[0]
    scheduler = DDIMScheduler.from_config(model.component("scheduler").config)
    scheduler.set_timesteps(config.ddim_steps)
    torch.randint(1, (1,), generator=gen)
    x, t_enc = _latent_by_hand(student, scheduler, gen, emb_0, emb_c, config)
    t = scheduler.timesteps[t_enc]
    with torch.no_grad():
        e_0, e_p = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([emb_0, emb_c])).sample.chunk(2)
    target = e_0 - config.negative_guidance * (e_p - e_0)
    esd_term = torch.nn.functional.mse_loss(student(x, t, encoder_hidden_states=emb_c).sample, target)
    j = int(torch.randint(len(config.preserve), (1,), generator=gen))
    shipped_student = _with_patch(unet, through, "unet").requires_grad_(True)
    with torch.no_grad():
        keep = unet(x, t, encoder_hidden_states=emb_keep[j : j + 1]).sample
    retain = torch.nn.functional.mse_loss(
        shipped_student(x, t, encoder_hidden_states=shipped_keep[j : j + 1]).sample, keep
    )
    loss = esd_term + config.preserve_weight * retain
    out = {"esd": esd_term.item(), "retain": retain.item(), "student": student}
    if config.adversary_through:
        table = text_transformer(shipped_encoder).embeddings.token_embedding.weight.detach()
        start = table[model.tokenizer()("cat", add_special_tokens=False).input_ids].mean(0)
        prediction, recovery, grad = _attacker_by_hand(
            model, start, x, t, shipped_student, e_p, encoder=shipped_encoder
        )
        erased = torch.nn.functional.mse_loss(prediction, target)
        loss = loss + config.adversary_weight * erased
        out |= {"recovery": recovery, "erased": erased.item(), "start": start, "grad": grad}
    loss.backward()
    shipped_params = dict(shipped_student.named_parameters())
    for n, p in student.named_parameters():
        p.grad = p.grad + shipped_params[n].grad
    return out | {"loss": loss.item()}


def test_esd_retain_through_the_shipped_parts_restated_for_one_step(model):
    """Ours (erase's retain_through): with a patch of a text-encoder tensor and of the cross-attention's
    keys and values, the first step's retain term is restated as the original model's prediction for the
    drawn kept prompt against the trained U-Net's with the patch's U-Net tensors in place, fed the prompt
    as the patched encoder encodes it; ESD's own term and x_t stay the trained U-Net's alone. The loss and
    Adam's first step (gradients of both forwards summed) match; the record names the patch; the caller's
    model is untouched; no preserve set, or a patch of tensors ESD trains, is refused."""
    from hirm.core.esd import erase as esd_erase

    through = _stack_patch(model)
    preserve = ("dog", "a red car", "tree")
    config = ESDUConfig(
        steps=1, lr=1e-3, ddim_steps=4, negative_guidance=1.5, seed=3, preserve=preserve, preserve_weight=1.5
    )
    before = _state(model)
    patch = esd_erase(model, CAT, config, progress=False, retain_through=through)
    step = _shipped_step_by_hand(model, config, through)
    assert step["retain"] > 0  # without the patch the first step's retain term is 0
    assert patch.metadata["retain_losses"]["unet"][0] == pytest.approx(step["retain"], rel=1e-3)
    assert patch.metadata["losses"]["unet"][0] == pytest.approx(step["loss"], rel=1e-4)
    _check_adam_first_step(model, patch, config, dict(step["student"].named_parameters()))
    assert patch.metadata["retain_through"] == {"method": "test-stack", "digest": through.digest}
    assert not set(patch.tensors) & set(through.tensors)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    with pytest.raises(ValueError, match="give a preserve set"):
        esd_erase(model, CAT, ESDUConfig(steps=1, ddim_steps=4), progress=False, retain_through=through)
    with pytest.raises(ValueError, match="tensors that ESD trains"):
        esd_erase(model, CAT, ESDXConfig(steps=1, ddim_steps=4, preserve=preserve), progress=False,
                  retain_through=through)  # fmt: skip


def test_esd_adversary_through_the_shipped_parts_restated_for_one_step(model):
    """Ours (ESDConfig.adversary_through): the adversary's vector, started at "cat"'s word embedding, is
    encoded by the patched encoder and read by the trained U-Net with the patch's U-Net tensors in place;
    already at the first step it has something to recover (the patch stands in the way), so the restated
    recovery term is positive, the vector takes Adam's step down its gradient, and ESD's term at its input
    joins the loss (Adam's first step on the gradients of all three forwards summed). Without the patch,
    or without an adversary, the option is refused; it is recorded only when on."""
    from hirm.core.esd import erase as esd_erase

    through = _stack_patch(model)
    config = ESDUConfig(
        steps=1, lr=1e-3, ddim_steps=4, negative_guidance=1.5, seed=3, preserve=("dog", "a red car", "tree"),
        adversary="embedding", adversary_lr=0.05, adversary_weight=0.7, adversary_through=True,
    )  # fmt: skip
    before = _state(model)
    patch = esd_erase(model, CAT, config, progress=False, retain_through=through)
    step, meta = _shipped_step_by_hand(model, config, through), patch.metadata
    assert step["recovery"] > 0
    assert meta["adversary_recovery"]["unet"][0] == pytest.approx(step["recovery"], rel=1e-3)
    assert meta["adversary_losses"]["unet"][0] == pytest.approx(step["erased"], rel=1e-3)
    assert meta["losses"]["unet"][0] == pytest.approx(step["loss"], rel=1e-4)
    _check_adam_first_step(model, patch, config, dict(step["student"].named_parameters()))
    leaf = step["start"].clone().requires_grad_(True)
    adam = torch.optim.Adam([leaf], lr=0.05)
    leaf.grad = step["grad"]
    adam.step()
    _close(torch.tensor(meta["adversary_vectors"]["cat"]), leaf.detach(), rel=1e-3)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    assert meta["config"]["adversary_through"] is True
    assert "adversary_through" not in replace(config, adversary_through=False).to_dict()
    with pytest.raises(ValueError, match="give one"):
        esd_erase(model, CAT, config, progress=False)
    with pytest.raises(ValueError, match="adversary_through is set without an adversary"):
        ESDUConfig(adversary_through=True)


def _attacker_by_hand(model, vector: torch.Tensor, x, t, current, eps_concept, encoder=None):
    """Restate the adversary's recovery term and its gradient: "cat" encoded by the original text encoder
    (or ``encoder``; ``[start] cat [end]`` and padding, the concept prompt) with "cat"'s word embedding
    output replaced by ``vector``, ``current``'s prediction there against the original's prediction for the
    concept. Returns the prediction, the term and its gradient in the vector."""
    from hirm.core.encoder import text_transformer

    encoder = model.text_encoder() if encoder is None else encoder
    ids = model.tokenizer()(["cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    (cat,) = ids[0, 1:2].tolist()
    leaf = vector.detach().clone().requires_grad_(True)
    hook = text_transformer(encoder).embeddings.token_embedding.register_forward_hook(
        lambda _m, inputs, out: torch.where((inputs[0] == cat).unsqueeze(-1), leaf, out)
    )
    try:
        emb = encoder(input_ids=ids).last_hidden_state
    finally:
        hook.remove()
    prediction = current(x, t, encoder_hidden_states=emb).sample
    recovery = torch.nn.functional.mse_loss(prediction, eps_concept)
    (grad,) = torch.autograd.grad(recovery, leaf, retain_graph=True)
    return prediction, recovery.item(), grad


def test_esd_against_an_embedding_adversary_restated_for_two_steps(model):
    """Ours (ESDConfig.adversary): the vector starts at "cat"'s word embedding, so at the first step the
    adversary's term is ESD's term at the concept (recovery 0, the vector not moved) and the loss is
    (1 + weight) times it; at the second step the restated recovery and erasure terms of the once-updated
    U-Net, and the vector after it is Adam's step (adversary_lr) down the restated recovery gradient. The
    random stream is the authors' (the ESD terms equal a plain run's) and the caller's model is untouched."""
    from diffusers import DDIMScheduler

    from hirm.core.encoder import text_transformer

    config = ESDUConfig(
        steps=2, lr=1e-3, ddim_steps=4, negative_guidance=1.5, seed=3, adversary="embedding", adversary_lr=0.05,
        adversary_weight=0.7,
    )  # fmt: skip
    before = _state(model)
    grads = [None if p.grad is None else p.grad.clone() for p in model.text_encoder().parameters()]
    patch = _erase(model, "esd-u", config=config)
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    # no gradient reached the caller's encoder (the fixture's: earlier tests may have left some there)
    after = [p.grad for p in model.text_encoder().parameters()]
    assert all((a is None) == (b is None) and (a is None or torch.equal(a, b)) for a, b in zip(grads, after))
    plain = _erase(
        model, "esd-u", config=replace(config, adversary="none", adversary_lr=2e-2, adversary_weight=1)
    )
    first = _erase(model, "esd-u", config=replace(config, steps=1))
    meta, esd = patch.metadata, plain.metadata["losses"]["unet"]
    assert meta["adversary_recovery"]["unet"][0] == pytest.approx(0.0, abs=1e-9)
    assert meta["adversary_losses"]["unet"][0] == pytest.approx(esd[0], rel=1e-5)
    assert meta["losses"]["unet"][0] == pytest.approx(1.7 * esd[0], rel=1e-5)
    # the second step, restated at the once-updated U-Net (the first update is Adam's sign step on a
    # gradient (1 + weight) times ESD's: the same patch as the plain run's first step)
    unet = model.component("unet")
    current = _with_patch(unet, first, "unet")
    hidden, _ = prompt_embeddings(model.text_encoder(), model.tokenizer(), ["", "cat"])
    emb_0, emb_c = hidden[:1], hidden[1:2]
    scheduler = DDIMScheduler.from_config(model.component("scheduler").config)
    scheduler.set_timesteps(config.ddim_steps)
    gen = torch.Generator().manual_seed(config.seed)
    torch.randint(1, (1,), generator=gen)
    _latent_by_hand(unet, scheduler, gen, emb_0, emb_c, config)  # the first step's draws
    torch.randint(1, (1,), generator=gen)
    x, t_enc = _latent_by_hand(current, scheduler, gen, emb_0, emb_c, config)
    t = scheduler.timesteps[t_enc]
    with torch.no_grad():
        e_0, e_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([emb_0, emb_c])).sample.chunk(2)
    table = text_transformer(model.text_encoder()).embeddings.token_embedding.weight.detach()
    start = table[model.tokenizer()("cat", add_special_tokens=False).input_ids].mean(0)
    prediction, recovery, grad = _attacker_by_hand(model, start, x, t, current, e_c)
    erased = torch.nn.functional.mse_loss(prediction, e_0 - 1.5 * (e_c - e_0)).item()
    assert recovery > 0
    assert meta["adversary_recovery"]["unet"][1] == pytest.approx(recovery, rel=1e-3)
    assert meta["adversary_losses"]["unet"][1] == pytest.approx(erased, rel=1e-3)
    assert meta["losses"]["unet"][1] == pytest.approx(esd[1] + 0.7 * erased, rel=1e-3)
    leaf = start.clone().requires_grad_(True)
    adam = torch.optim.Adam([leaf], lr=0.05)
    leaf.grad = grad  # the attacker's first step (none at the first, where there is nothing to recover)
    adam.step()
    _close(torch.tensor(meta["adversary_vectors"]["cat"]), leaf.detach(), rel=1e-3)
    # off: no trace in the record; its settings without it, and batched ESD with it, are refused
    assert "adversary" not in plain.metadata["config"] and config.to_dict()["adversary"] == "embedding"
    with pytest.raises(ValueError, match="set without an adversary"):
        ESDUConfig(adversary_weight=2.0)
    from hirm.core.esd_batched import erase_each

    with pytest.raises(ValueError, match="without an adversary"):
        erase_each(model, CAT, config, progress=False)


def test_esd_bf16_trains_the_same_tensors_with_nearly_the_same_loss(model):
    fp32 = _erase(model, "esd-u", config=ESDUConfig(steps=2, ddim_steps=4, lr=1e-4))
    bf16 = _erase(model, "esd-u", config=ESDUConfig(steps=2, ddim_steps=4, lr=1e-4, precision="bf16"))
    assert bf16.tensors.keys() == fp32.tensors.keys()
    assert all(v.dtype == torch.float32 for v in bf16.tensors.values())
    assert fp32.metadata["losses"]["unet"] != bf16.metadata["losses"]["unet"]  # bf16 really ran
    # Adam's steps are ~lr * sign(g): the same direction for almost every parameter.
    base = component_parameters(model.component("unet"))
    agree = [
        (torch.sign(fp32.tensors[k] - base[k.split("/", 1)[1]]) == torch.sign(v - base[k.split("/", 1)[1]]))
        .float()
        .mean()
        .item()
        for k, v in bf16.tensors.items()
    ]
    assert sum(agree) / len(agree) > 0.8, agree


def test_esd_moves_the_concept_prediction_toward_the_negatively_guided_target(model):
    """On fixed latents and timesteps the ESD loss of the trained U-Net is below the original's."""
    unet = model.component("unet")
    config = ESDXConfig(steps=8, lr=1e-3, ddim_steps=4)
    patch = _erase(model, "esd-x", config=config)
    losses = patch.metadata["losses"]["unet"]
    assert len(losses) == 8 and all(v >= 0 for v in losses)
    trained = _with_patch(unet, patch, "unet")
    hidden, _ = prompt_embeddings(model.text_encoder(), model.tokenizer(), ["", "cat"])
    emb_0, emb_c = hidden[:1], hidden[1:]
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([999, 700, 400, 100])
    with torch.no_grad():
        target = esd_target(
            unet(x, t, encoder_hidden_states=emb_0.expand(4, -1, -1)).sample,
            unet(x, t, encoder_hidden_states=emb_c.expand(4, -1, -1)).sample,
            config.negative_guidance,
        )
        before = torch.nn.functional.mse_loss(
            unet(x, t, encoder_hidden_states=emb_c.expand(4, -1, -1)).sample, target
        )
        after = torch.nn.functional.mse_loss(
            trained(x, t, encoder_hidden_states=emb_c.expand(4, -1, -1)).sample, target
        )
    assert after < 0.9 * before


# ---------------------------------------------------------------------------------------- DiffQuickFix


def _authors_dqf(model, concept, guide, *, lam=0.01, use_eos=True, bias=True):
    """The notebook's edit: augmented prompts, an out_proj forward hook (input of the concept prompt,
    output of the guide prompt), key indices from the token before the first end token to 76, value
    indices from the guide's such token on, padded with 76; W' = (lam W + sum v k^T)(lam I + sum k k^T)^-1."""
    encoder, tok = model.text_encoder(), model.tokenizer()
    module = encoder.encoder.layers[0].self_attn.out_proj

    def augment(text):
        base = text if text[0:1] != "A" else "a" + text[1:]
        return [text, "A photo of " + base, "An image of " + base, "A picture of " + base]

    contexts, values = [], []

    def hook(_module, inputs, output):  # the notebook's hook: the concept's input, the guide's output
        contexts.append(inputs[0][0].detach())
        values.append(output[1].detach())

    handle = module.register_forward_hook(hook)
    keys, vals = [], []
    for old, new in zip(augment(concept), augment(guide), strict=True):
        ids = tok(
            [old, new], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        i_old, i_new = (row.tolist().index(EOT) - 1 for row in ids)
        with torch.no_grad():
            encoder(ids)
        key_idx = list(range(i_old, 77)) if use_eos else [i_old]
        val_idx = list(range(i_new, 77))[: len(key_idx)] if use_eos else [i_new]
        val_idx += [76] * (len(key_idx) - len(val_idx))
        keys.append(contexts[-1][key_idx].double())
        v = values[-1][val_idx].double()
        vals.append(v if bias else v - module.bias.detach().double())
    handle.remove()
    k, v = torch.cat(keys), torch.cat(vals)
    w = module.weight.detach().double()
    return (lam * w + v.T @ k) @ torch.linalg.inv(lam * torch.eye(w.shape[1], dtype=torch.float64) + k.T @ k)


@pytest.mark.parametrize(
    ("concept", "guide", "config", "kwargs"),
    [
        ("van gogh", "", DiffQuickFixConfig(), {}),  # the empty guide, read from its start token
        ("van gogh", "painting", DiffQuickFixConfig(guide="painting"), {}),  # the notebook's example
        ("cat", "a big red dog", DiffQuickFixConfig(guide="a big red dog"), {}),  # values padded with 76
        ("cat", "dog", DiffQuickFixConfig(guide="dog", use_eos=False), {"use_eos": False}),
        ("cat", "dog", DiffQuickFixConfig(guide="dog", value="bias-free"), {"bias": False}),
    ],
)
def test_diffquickfix_equals_the_notebooks_edit(model, concept, guide, config, kwargs):
    patch = _erase(model, "diffquickfix", [Concept(concept)], config)
    assert patch.tensors.keys() == {OUT_PROJ0}  # only layers.0.self_attn.out_proj.weight
    _close(patch.tensors[OUT_PROJ0], _authors_dqf(model, concept, guide, **kwargs), rel=1e-4)
    tok = model.tokenizer()
    last = len(tok(concept)["input_ids"]) - 2
    pairs_per_prompt = [77 - (last + extra) for extra in (0, 3, 3, 3)] if config.use_eos else [1] * 4
    assert patch.metadata["num_pairs"] == sum(pairs_per_prompt)


def test_slot_position_finds_the_last_token_of_the_concept(model):
    tok = model.tokenizer()
    ids = tok("a photo of van gogh")["input_ids"]
    assert slot_position(tok, "a photo of {concept}", "van gogh") == len(ids) - 2
    assert slot_position(tok, "{concept} painting", "van gogh") == len(tok("van gogh")["input_ids"]) - 2
    assert slot_position(tok, "{concept}", "") == 0  # the empty guide: its start token, as the notebook
    assert slot_position(tok, "A photo of {concept}", "") == 3  # "of"


def test_diffquickfix_bias_free_value_gives_the_guide_output_and_the_notebook_adds_the_bias_twice(model):
    """One pair at the last tokens, a tiny lam: with value='bias-free' the edited out_proj maps the
    concept's key to exactly the guide's output (W' k + b = W k* + b); with the notebook's value the
    edited layer gives the guide's output plus the bias once more."""
    encoder, tok = model.text_encoder(), model.tokenizer()
    position = slot_position(tok, "{concept}", "cat")
    k_cat = out_proj_inputs(encoder, tok, ["cat"], 0)[0, position]
    k_dog = out_proj_inputs(encoder, tok, ["dog"], 0)[0, slot_position(tok, "{concept}", "dog")]
    layer = encoder.encoder.layers[0].self_attn.out_proj
    with torch.no_grad():
        dog_out, old_out = layer(k_dog), layer(k_cat)
    assert (old_out - dog_out).norm() > 0.1 * dog_out.norm()
    for value, expected in (("bias-free", dog_out), ("notebook", dog_out + layer.bias.detach())):
        config = DiffQuickFixConfig(
            guide="dog", lam=1e-6, templates=("{concept}",), use_eos=False, value=value
        )
        patched = _with_patch(encoder, _erase(model, "diffquickfix", config=config), "text_encoder")
        with torch.no_grad():
            new_out = patched.encoder.layers[0].self_attn.out_proj(k_cat)
        torch.testing.assert_close(new_out, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    # Block 0's inputs to out_proj are unchanged by the edit (it is the only edited tensor).
    torch.testing.assert_close(
        out_proj_inputs(patched, tok, ["cat"], 0), out_proj_inputs(encoder, tok, ["cat"], 0)
    )


# ----------------------------------------------------------------------------------------------- naive


def test_naive_trains_hirms_tensors_and_pulls_the_final_output_to_the_anchor(model):
    encoder, tok = model.text_encoder(), model.tokenizer()
    patch = _erase(model, "naive", config=NaiveConfig(steps=10, lr=1e-3, precision="fp32"))
    names = hirm_names(encoder, HiRMConfig())
    assert patch.tensors.keys() == {f"text_encoder/{n}" for n in names}
    assert patch.metadata["method"] == "naive" and patch.metadata["concepts"][0]["target"]["prompt"] == ""
    assert patch.metadata["hirm_config"]["read"] == {"layer": -1, "site": "final"}
    with torch.no_grad():
        ids = tok("", padding="max_length", max_length=tok.model_max_length, return_tensors="pt")["input_ids"]
        anchor = encoder(input_ids=ids).last_hidden_state
    patched = _with_patch(encoder, patch, "text_encoder")
    before = torch.nn.functional.mse_loss(_final(encoder, tok, ["cat"]), anchor)
    after = torch.nn.functional.mse_loss(_final(patched, tok, ["cat"]), anchor)
    assert after < 0.8 * before
    losses = patch.metadata["losses"]["text_encoder"]
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------- HiRM + UCE


def test_hirm_and_uce_patches_compose_on_one_pipeline(sd_dir, model):
    hirm_patch = hirm.erase(model, CAT, method="hirm", config=HiRMConfig(steps=3, lr=1e-3), progress=False)
    uce_patch = _erase(model, "uce")
    assert hirm_patch.components == ("text_encoder",) and uce_patch.components == ("unet",)
    both = apply_patches(hirm.load_model(sd_dir).pipeline(), [hirm_patch, uce_patch])
    alone = {"text_encoder": hirm_patch, "unet": uce_patch}
    for comp, patch in alone.items():
        single = apply_patches(getattr(hirm.load_model(sd_dir).pipeline(), comp), [patch], component=comp)
        combined = component_parameters(getattr(both, comp))
        for name, value in component_parameters(single).items():
            assert torch.equal(combined[name], value), f"{comp}/{name} differs from its patch applied alone"
        assert all(torch.equal(combined[k.split("/", 1)[1]], v) for k, v in patch.tensors.items())


# ------------------------------------------------------------------------------------ other families


def test_text_encoder_methods_edit_both_sdxl_encoders_and_unet_methods_refuse_sdxl(sdxl_dir, model):
    sdxl = hirm.load_model(sdxl_dir)
    dqf = _erase(sdxl, "diffquickfix")
    assert set(dqf.tensors) == {OUT_PROJ0, OUT_PROJ0.replace("text_encoder/", "text_encoder_2/")}
    naive = hirm.get_method("naive").erase(
        sdxl, CAT, FAST["naive"], components=["text_encoder_2"], progress=False
    )
    assert naive.components == ("text_encoder_2",)
    # SDXL feeds its U-Net the penultimate hidden state: the naive baseline supervises that, and HiRM's
    # default read-out moves to the second-to-last block (recorded in the patch).
    assert naive.metadata["hirm_config"]["read"] == {"layer": -2, "site": "hidden"}
    patch = hirm.erase(sdxl, CAT, config=HiRMConfig(steps=1), progress=False)
    assert patch.metadata["config"]["read"] == {"layer": -2, "site": "attn"}
    assert hirm.erase(model, CAT, config=HiRMConfig(steps=1), progress=False).metadata["config"]["read"] == {
        "layer": -1,
        "site": "attn",
    }
    for name in ("uce", "esd-x"):
        with pytest.raises(ValueError, match="Stable Diffusion 1.x/2.x"):
            _erase(sdxl, name)
    with pytest.raises(ValueError, match="KV-Proj is implemented for Stable Diffusion 1.x/2.x"):
        _erase(sdxl, "kv-proj")
    with pytest.raises(ValueError, match="only the 'unet'"):
        hirm.get_method("uce").erase(model, CAT, UCEConfig(), components=["text_encoder"])
