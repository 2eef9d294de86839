"""Peer methods (UCE, ESD-x/-u, DiffQuickFix, naive fine-tuning) on a tiny random SD pipeline: each
method's defining property, only its tensors change, determinism, exact save/load, the caller's model
untouched, the public API, and HiRM + UCE composing as two disjoint patches."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import hirm
from hirm.core.config import Concept, HiRMConfig, ReadingPoint
from hirm.core.diffquickfix import DiffQuickFixConfig, out_proj_inputs, pairs, slot_position
from hirm.core.encoder import read_representation, tokenize
from hirm.core.esd import ESDConfig, ESDUConfig, ESDXConfig, esd_target
from hirm.core.esd import trainable_names as esd_names
from hirm.core.hirm import trainable_names as hirm_names
from hirm.core.naive import NaiveConfig
from hirm.core.patch import Patch, apply_patches, component_parameters
from hirm.core.uce import UCEConfig, prompt_embeddings, select_tokens, uce_transform

CAT = [Concept("cat")]
OUT_PROJ0 = "text_encoder/encoder.layers.0.self_attn.out_proj.weight"

#: Small configs: every method in well under a second on the tiny pipeline.
FAST = {
    "uce": UCEConfig(preserve=("dog",)),
    "esd-x": ESDXConfig(steps=2, ddim_steps=4),
    "esd-u": ESDUConfig(steps=2, ddim_steps=4),
    "diffquickfix": DiffQuickFixConfig(templates=("a photo of {concept}", "{concept}")),
    "naive": NaiveConfig(steps=3, lr=1e-3),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on the shared 2-core machine two threads are ~10x slower for these tiny nets."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    assert (uce.erase_scale, uce.preserve_scale, uce.lamb, uce.tokens, uce.preserve) == (
        1.0,
        1.0,
        0.5,
        "last",
        (),
    )
    assert DiffQuickFixConfig().lam == 0.01 and DiffQuickFixConfig().guide == ""
    naive = NaiveConfig().hirm_config()
    assert naive.read == ReadingPoint(site="final") and naive.trainable == "first-attn"
    assert (naive.betas, naive.eps, naive.weight_decay) == (
        HiRMConfig().betas,
        HiRMConfig().eps,
        HiRMConfig().weight_decay,
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: UCEConfig(lamb=0),
        lambda: UCEConfig(tokens="some"),
        lambda: UCEConfig(preserve="dog"),
        lambda: ESDConfig(steps=0),
        lambda: ESDConfig(variant="esd-z"),
        lambda: ESDXConfig(variant="esd-u"),
        lambda: DiffQuickFixConfig(lam=0),
        lambda: DiffQuickFixConfig(templates=("no slot",)),
        lambda: NaiveConfig(steps=0),
        lambda: NaiveConfig(anchor="  "),
    ],
)
def test_bad_configs_fail_early(make):
    with pytest.raises((ValueError, TypeError)):
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


def test_uce_edits_exactly_every_cross_attention_key_and_value(model):
    unet = model.component("unet")
    assert _erase(model, "uce").tensors.keys() == _attn2_kv(unet)
    values_only = _erase(model, "uce", config=UCEConfig(edit_keys=False))
    assert values_only.tensors.keys() == {k for k in _attn2_kv(unet) if ".to_v." in k}


def test_uce_transform_solves_the_editing_equations_exactly():
    gen = torch.Generator().manual_seed(0)
    c, g, p = (torch.randn(n, 16, generator=gen, dtype=torch.float64) for n in (3, 3, 4))
    w = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    t = uce_transform(c, g, p, erase_scale=1.0, preserve_scale=1.0, lamb=1e-9)
    torch.testing.assert_close(c @ (w @ t).T, g @ w.T, rtol=1e-6, atol=1e-6)  # W' c_i = W c*_i
    torch.testing.assert_close(p @ (w @ t).T, p @ w.T, rtol=1e-6, atol=1e-6)  # W' c_j = W c_j


def _uce_vectors(model, config, concepts=("cat",), guide="", preserve=()):
    hidden, lengths = prompt_embeddings(
        model.text_encoder(), model.tokenizer(), [*concepts, guide, *preserve]
    )
    rows = (
        select_tokens(hidden, lengths, config.tokens).double().reshape(hidden.shape[0], -1, hidden.shape[-1])
    )
    n = len(concepts)
    return rows[:n].flatten(0, 1), rows[n].expand(n, -1, -1).flatten(0, 1), rows[n + 1 :].flatten(0, 1)


def test_uce_maps_the_concept_to_the_guide_and_keeps_the_preserved(model):
    """With one concept and one preserved prompt (2 vectors in 32 dims) an exact solution exists; a
    tiny lamb reaches it: W' c = W c* and W' c_p = W c_p to 1e-4 relative."""
    config = UCEConfig(preserve=("dog",), lamb=1e-8)
    patch = _erase(model, "uce", config=config)
    c, c_star, c_keep = _uce_vectors(model, config, preserve=("dog",))
    params = component_parameters(model.component("unet"))
    for key, new in patch.tensors.items():
        w, w_new = params[key.split("/", 1)[1]].detach().double(), new.double()
        torch.testing.assert_close(
            c @ w_new.T, c_star @ w.T, rtol=1e-4, atol=1e-4 * (c_star @ w.T).abs().max().item()
        )
        torch.testing.assert_close(
            c_keep @ w_new.T, c_keep @ w.T, rtol=1e-4, atol=1e-4 * (c_keep @ w.T).abs().max().item()
        )
        assert (c @ w.T - c_star @ w.T).norm() > 1e-2 * (c_star @ w.T).norm()  # the edit did something


def test_uce_defaults_minimise_the_regularised_objective(model):
    """With the default lamb and all 77 positions (over-determined) the edit is the least-squares
    optimum: the gradient e sum (W'c - Wc*)c^T + p sum (W'c_p - Wc_p)c_p^T + lamb (W' - W) vanishes."""
    config = UCEConfig(preserve=("dog", "a red house"), tokens="all")
    patch = _erase(model, "uce", config=config)
    c, c_star, c_keep = _uce_vectors(model, config, preserve=config.preserve)
    params = component_parameters(model.component("unet"))
    for key, new in patch.tensors.items():
        w, w_new = params[key.split("/", 1)[1]].detach().double(), new.double()
        grad = (
            (c @ w_new.T - c_star @ w.T).T @ c
            + (c_keep @ w_new.T - c_keep @ w.T).T @ c_keep
            + config.lamb * (w_new - w)
        )
        scale = (c_star @ w.T).T.abs() @ c.abs()  # size of the terms that cancel
        assert (grad.abs() / scale.max()).max() < 1e-5


def test_uce_default_guide_is_art_for_styles(model):
    patch = _erase(
        model, "uce", concepts=[Concept("van gogh", kind="style"), Concept("cat")], config=UCEConfig()
    )
    assert patch.metadata["guides"] == ["art", ""]
    assert _erase(model, "uce", config=UCEConfig(guide="dog")).metadata["guides"] == ["dog"]


# ------------------------------------------------------------------------------------------------- ESD


def test_esd_trains_exactly_its_variants_tensors(model):
    unet = model.component("unet")
    every = {f"unet/{n}" for n in component_parameters(unet)}
    xattn = {k for k in every if "attn2" in k.split("/", 1)[1].split(".")}
    assert _attn2_kv(unet) < xattn
    assert set(_erase(model, "esd-x").tensors) == xattn == {f"unet/{n}" for n in esd_names(unet, "esd-x")}
    assert set(_erase(model, "esd-u").tensors) == every - xattn


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


def test_slot_position_finds_the_last_token_of_the_concept(model):
    tok = model.tokenizer()
    ids = tok("a photo of van gogh")["input_ids"]
    assert slot_position(tok, "a photo of {concept}", "van gogh") == len(ids) - 2
    assert slot_position(tok, "{concept} painting", "van gogh") == len(tok("van gogh")["input_ids"]) - 2
    assert slot_position(tok, "{concept}", "") == 1  # the empty guide: its end token


def test_diffquickfix_sends_the_concept_key_to_the_guide_value(model):
    """W' k_i = v_i exactly when lam -> 0 (4 pairs in 32 dims); with the paper's lam = 0.01 the edit is
    the regularised least-squares optimum: (W' K^T - V^T) K + lam (W' - W) = 0."""
    encoder, tok = model.text_encoder(), model.tokenizer()
    concepts = [Concept("cat"), Concept("van gogh")]
    templates = ("a photo of {concept}", "{concept} in a field")
    keys, values = pairs(encoder, tok, concepts, DiffQuickFixConfig(guide="dog", templates=templates))
    k, v = keys.double(), values.double()
    w = encoder.encoder.layers[0].self_attn.out_proj.weight.detach().double()

    exact = _erase(
        model, "diffquickfix", concepts, DiffQuickFixConfig(guide="dog", templates=templates, lam=1e-8)
    )
    assert exact.tensors.keys() == {OUT_PROJ0} and exact.metadata["num_pairs"] == 4
    torch.testing.assert_close(
        k @ exact.tensors[OUT_PROJ0].double().T, v, rtol=1e-4, atol=1e-4 * v.abs().max().item()
    )

    config = DiffQuickFixConfig(guide="dog", templates=templates)
    w_new = _erase(model, "diffquickfix", concepts, config).tensors[OUT_PROJ0].double()
    grad = (k @ w_new.T - v).T @ k + config.lam * (w_new - w)
    assert grad.abs().max() < 1e-5 * (v.T.abs() @ k.abs()).max()
    assert (k @ w_new.T - v).norm() < 0.2 * (k @ w.T - v).norm()


def test_diffquickfix_patched_encoder_gives_the_guide_attention_output_at_the_concept(model):
    encoder, tok = model.text_encoder(), model.tokenizer()
    patch = _erase(model, "diffquickfix", config=DiffQuickFixConfig(guide="dog", lam=1e-6))
    patched = _with_patch(encoder, patch, "text_encoder")
    position = slot_position(tok, "{concept}", "cat")
    k_cat = out_proj_inputs(encoder, tok, ["cat"], 0)[0, position]
    k_dog = out_proj_inputs(encoder, tok, ["dog"], 0)[0, slot_position(tok, "{concept}", "dog")]
    with torch.no_grad():
        new_out = patched.encoder.layers[0].self_attn.out_proj(k_cat)
        dog_out = encoder.encoder.layers[0].self_attn.out_proj(k_dog)
        old_out = encoder.encoder.layers[0].self_attn.out_proj(k_cat)
    torch.testing.assert_close(new_out, dog_out, rtol=1e-3, atol=1e-3 * dog_out.abs().max().item())
    assert (old_out - dog_out).norm() > 0.1 * dog_out.norm()
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
    for name in ("uce", "esd-x"):
        with pytest.raises(ValueError, match="Stable Diffusion 1.x/2.x"):
            _erase(sdxl, name)
    with pytest.raises(ValueError, match="only the 'unet'"):
        hirm.get_method("uce").erase(model, CAT, UCEConfig(), components=["text_encoder"])
