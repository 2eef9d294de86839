"""KV-Proj (``hirm.core.kv_proj``, ours): recomputed here from its definition on the tiny SD pipeline.

The subspace (differences of the encoder's rows, SVD), the projection (orthogonal, or the generalized
least-squares one that moves the preserved rows least) and the edit ``W' = W T`` of every cross-attention
key and value are written out independently of the module; the property that matters against embedding
attacks is checked on the edited U-Net itself: no text embedding's component in the subspace reaches it.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

import hirm
from hirm.core.config import Concept
from hirm.core.kv_proj import DEFAULT_TEMPLATES, KVProjConfig
from hirm.core.patch import apply_patches, component_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CAT = [Concept("cat")]


@pytest.fixture(scope="module")
def model(sd_dir):
    return hirm.load_model(sd_dir)


def _rows(model, prompts):
    """``last_hidden_state`` of ``prompts`` padded to the tokenizer's length, as SD pipelines call CLIP."""
    tok, enc = model.tokenizer("text_encoder"), model.text_encoder("text_encoder")
    ids = tok(
        list(prompts), padding="max_length", max_length=tok.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return enc(ids)[0].double()


def _basis(model, concept, templates, contrast, rank):
    named = _rows(model, [t.replace("{concept}", concept) for t in templates])
    ref = sum(_rows(model, [t.replace("{concept}", w) for t in templates]) for w in contrast) / len(contrast)
    diff = (named - ref).reshape(-1, named.shape[-1])
    # top right singular vectors = top eigenvectors of diff^T diff (eigh: ascending order)
    _, vecs = torch.linalg.eigh(diff.T @ diff)
    return vecs[:, -rank:]


def _kv(model):
    unet = model.component("unet")
    return {
        n: p.detach().clone()
        for n, p in component_parameters(unet).items()
        if ".attn2." in n and (n.endswith("to_k.weight") or n.endswith("to_v.weight"))
    }


def _span_equal(pa: torch.Tensor, pb: torch.Tensor) -> None:
    """Two orthogonal projectors are the same (their subspaces are)."""
    torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)


def test_orthogonal_edit_is_w_times_i_minus_the_concepts_projector(model):
    config = KVProjConfig(rank=3, templates=("{concept}", "a photo of {concept}"), contrast=("", "dog"))
    patch = hirm.get_method("kv-proj").erase(model, CAT, config, progress=False)
    u = _basis(model, "cat", config.templates, config.contrast, 3)
    t = torch.eye(u.shape[0], dtype=torch.float64) - u @ u.T
    originals = _kv(model)
    assert {k.removeprefix("unet/") for k in patch.tensors} == set(originals)
    for name, w in originals.items():
        torch.testing.assert_close(
            patch.tensors[f"unet/{name}"].double(), w.double() @ t, atol=1e-6, rtol=1e-5
        )
    assert patch.metadata["removed_directions"] == 3 and patch.metadata["preserved_rows"] == 0


def _sym_power(m: torch.Tensor, power: float) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return vecs @ torch.diag(vals**power) @ vecs.T


def test_with_preserve_the_directions_are_the_generalized_eigenvectors_and_touch_the_preserved_rows_less(
    model,
):
    templates = ("{concept}", "a photo of {concept}")
    config = KVProjConfig(rank=2, templates=templates, preserve=("dog", "a house"))
    patch = hirm.get_method("kv-proj").erase(model, CAT, config, progress=False)
    kv = _kv(model)
    # T from W' = W T: the kv weights stacked over layers have full column rank on the tiny model
    ws = torch.cat([v.double() for v in kv.values()])
    es = torch.cat([patch.tensors[f"unet/{k}"].double() for k in kv])
    t = torch.linalg.lstsq(ws, es).solution
    torch.testing.assert_close(t, t.T, atol=1e-6, rtol=0)  # an orthogonal projection
    torch.testing.assert_close(t @ t, t, atol=1e-6, rtol=0)
    named = _rows(model, [tp.replace("{concept}", "cat") for tp in templates])
    empty = _rows(model, [tp.replace("{concept}", "") for tp in templates])
    diff = (named - empty).reshape(-1, named.shape[-1])
    keep = _rows(model, [tp.replace("{concept}", p) for p in ("dog", "a house") for tp in templates])
    keep = keep.reshape(-1, keep.shape[-1])
    sigma = keep.T @ keep / keep.shape[0]
    b = sigma + 1e-3 * sigma.trace() / sigma.shape[0] * torch.eye(sigma.shape[0], dtype=torch.float64)
    # generalized eigenvectors by symmetric whitening (the module uses a Cholesky factor)
    w_half = _sym_power(b, -0.5)
    _, vecs = torch.linalg.eigh(w_half @ (diff.T @ diff / diff.shape[0]) @ w_half)
    u = w_half @ vecs[:, -2:]
    q, _ = torch.linalg.qr(u)
    _span_equal(torch.eye(q.shape[0], dtype=torch.float64) - t, q @ q.T)
    # the preserved rows lose less to these directions than to the plain SVD ones of the same rank
    plain = hirm.get_method("kv-proj").erase(
        model, CAT, KVProjConfig(rank=2, templates=templates), progress=False
    )
    t_plain = torch.linalg.lstsq(ws, torch.cat([plain.tensors[f"unet/{k}"].double() for k in kv])).solution
    lost = lambda m: float(((keep @ (torch.eye(m.shape[0], dtype=torch.float64) - m)) ** 2).sum())  # noqa: E731
    assert lost(t) < lost(t_plain)


def test_with_spare_the_directions_leave_what_tells_the_spared_words_apart(model):
    """``spare``: the generalized eigenvectors against the second moment of the spared words' rows minus
    their mean in each template (what tells them apart), recomputed here; they move those differences
    less than the plain directions do."""
    templates = ("{concept}", "a photo of {concept}")
    spare_t = ("a {concept} on a table", "{concept}", "a drawing of {concept}")
    words = ("dog", "a house", "tree")
    config = KVProjConfig(rank=2, templates=templates, spare=words, spare_templates=spare_t, ridge=0.5)
    patch = hirm.get_method("kv-proj").erase(model, CAT, config, progress=False)
    assert patch.metadata["preserved_rows"] == len(words) * len(spare_t) * 77
    kv = _kv(model)
    ws = torch.cat([v.double() for v in kv.values()])
    t = torch.linalg.lstsq(ws, torch.cat([patch.tensors[f"unet/{k}"].double() for k in kv])).solution
    named = _rows(model, [tp.replace("{concept}", "cat") for tp in templates])
    empty = _rows(model, [tp.replace("{concept}", "") for tp in templates])
    diff = (named - empty).reshape(-1, named.shape[-1])
    per_word = torch.stack([_rows(model, [tp.replace("{concept}", w) for tp in spare_t]) for w in words])
    apart = (per_word - per_word.mean(0)).reshape(-1, per_word.shape[-1])
    sigma = apart.T @ apart / apart.shape[0]
    b = sigma + 0.5 * sigma.trace() / sigma.shape[0] * torch.eye(sigma.shape[0], dtype=torch.float64)
    w_half = _sym_power(b, -0.5)
    _, vecs = torch.linalg.eigh(w_half @ (diff.T @ diff / diff.shape[0]) @ w_half)
    q, _ = torch.linalg.qr(w_half @ vecs[:, -2:])
    _span_equal(torch.eye(q.shape[0], dtype=torch.float64) - t, q @ q.T)
    plain = hirm.get_method("kv-proj").erase(
        model, CAT, KVProjConfig(rank=2, templates=templates), progress=False
    )
    t_plain = torch.linalg.lstsq(ws, torch.cat([plain.tensors[f"unet/{k}"].double() for k in kv])).solution
    eye = torch.eye(t.shape[0], dtype=torch.float64)
    lost = lambda m: float(((apart @ (eye - m)) ** 2).sum())  # noqa: E731
    assert lost(t) < lost(t_plain)


def test_the_edited_unet_ignores_every_text_embeddings_component_in_the_subspace(model):
    """What stops a learned embedding: the cross-attention inputs along the subspace no longer matter."""
    config = KVProjConfig(rank=4)
    patch = hirm.get_method("kv-proj").erase(model, CAT, config, progress=False)
    u = _basis(model, "cat", DEFAULT_TEMPLATES["object"], ("",), 4).float()
    unet = apply_patches(copy.deepcopy(model.component("unet")), [patch], component="unet")
    original = model.component("unet")
    torch.manual_seed(0)
    sample = torch.randn(1, unet.config.in_channels, 8, 8)
    text = _rows(model, ["a cat on a sofa"]).float()
    pushed = text + torch.randn(1, text.shape[1], u.shape[1]) @ u.T * 10.0
    with torch.no_grad():
        same = unet(sample, 10, encoder_hidden_states=text).sample
        moved = unet(sample, 10, encoder_hidden_states=pushed).sample
        before = original(sample, 10, encoder_hidden_states=text).sample
        before_pushed = original(sample, 10, encoder_hidden_states=pushed).sample
    torch.testing.assert_close(moved, same, atol=1e-4, rtol=1e-4)
    assert (before_pushed - before).abs().max() > 1e-2  # the original U-Net did read that component


def test_several_concepts_remove_the_union_of_their_directions(model):
    config = KVProjConfig(rank=2, templates=("{concept}", "a photo of {concept}"))
    patch = hirm.get_method("kv-proj").erase(model, [Concept("cat"), Concept("dog")], config, progress=False)
    assert patch.metadata["removed_directions"] == 4
    name, w = next(iter(_kv(model).items()))
    for concept in ("cat", "dog"):
        u = _basis(model, concept, config.templates, ("",), 2)
        residual = patch.tensors[f"unet/{name}"].double() @ u
        assert residual.abs().max() < 1e-5 * w.abs().max()


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: KVProjConfig(rank=0), "KVProjConfig.rank"),
        (lambda: KVProjConfig(rank=2.0), "KVProjConfig.rank"),
        (lambda: KVProjConfig(templates=("no slot",)), "KVProjConfig.templates[0]"),
        (lambda: KVProjConfig(templates="{concept}"), "KVProjConfig.templates"),
        (lambda: KVProjConfig(contrast=()), "KVProjConfig.contrast"),
        (lambda: KVProjConfig(preserve=("",)), "KVProjConfig.preserve"),
        (lambda: KVProjConfig(spare=("dog",)), "KVProjConfig.spare"),
        (lambda: KVProjConfig(spare=("dog", "cat"), preserve=("tree",)), "preserve or spare"),
        (lambda: KVProjConfig(spare_templates=("{concept}",)), "KVProjConfig.spare_templates"),
        (
            lambda: KVProjConfig(spare=("a", "b"), spare_templates=("none",)),
            "KVProjConfig.spare_templates[0]",
        ),
        (lambda: KVProjConfig(ridge=0), "KVProjConfig.ridge"),
        (lambda: KVProjConfig(harden_rounds=-1), "KVProjConfig.harden_rounds"),
        (lambda: KVProjConfig(harden_rank=0), "KVProjConfig.harden_rank"),
        (lambda: KVProjConfig(harden_lr=0.0), "KVProjConfig.harden_lr"),
        (lambda: KVProjConfig(key_rank=0), "KVProjConfig.key_rank"),
        (lambda: KVProjConfig(rank=2, key_rank=3), "KVProjConfig.key_rank"),
        (lambda: KVProjConfig(key_rank=1, edit_keys=False), "KVProjConfig.key_rank"),
        (lambda: KVProjConfig(key_rank=1, harden_rounds=1), "KVProjConfig.key_rank"),
    ],
)
def test_bad_configs_fail_early_naming_the_field(make, field):
    with pytest.raises((ValueError, TypeError), match=re.escape(field)):
        make()


def test_a_rank_the_prompts_cannot_span_is_refused(model):
    width = model.text_encoder("text_encoder").config.hidden_size
    with pytest.raises(ValueError, match="lower rank"):
        hirm.get_method("kv-proj").erase(model, CAT, KVProjConfig(rank=width), progress=False)


def test_world_templates_never_hold_the_grid_template():
    from hirm.evaluation.compare import world_templates
    from hirm.world.concepts import CANVAS_TEMPLATE

    assert CANVAS_TEMPLATE == "A {object} image in {style} style."  # the pattern below is this template
    for domain, grid in (
        ("style", r"A .+ image in \{concept\} style\."),
        ("object", r"A \{concept\} image in .+ style\."),
    ):
        templates = world_templates(domain)
        assert len(templates) > 20 and all(t.count("{concept}") == 1 for t in templates)
        assert not [t for t in templates if re.fullmatch(grid, t)]
        assert not [t for t in templates if "_super" in t]


def test_spare_templates_are_the_other_domains_and_never_name_the_concept_or_hold_the_grid():
    from hirm.evaluation.compare import spare_templates, world_templates

    for concept, domain, other in (("Rust", "style", "object"), ("Cats", "object", "style")):
        templates = spare_templates(concept, domain)
        assert templates and set(templates) < set(world_templates(other))
        assert not [t for t in templates if re.search(rf"\b{concept}\b", t)]
        dropped = set(world_templates(other)) - set(templates)
        assert dropped and all(concept in t for t in dropped)


def test_a_world_entry_names_only_its_own_methods_in_its_per_method_fields():
    from hirm.evaluation.compare import Entry

    for name in ("preserve_others", "world_templates", "contrast_others", "spare_others"):
        with pytest.raises(ValueError, match=f"{name} names \\['uce'\\]"):
            Entry("x", ("kv-proj",), **{name: ("uce",)})


HARD = KVProjConfig(
    rank=2,
    templates=("{concept}", "a photo of {concept}"),
    contrast=("", "dog"),
    harden_rounds=1,
    harden_rank=2,
    harden_steps=8,
    harden_lr=1e-3,
    harden_samples=3,
    ddim_steps=4,
)


def test_hardening_adds_the_top_directions_of_what_a_learned_embedding_carries(model):
    """One round: the learned embedding fits the original predictions better than where it started, and the
    subspace grows by the top singular vectors of ``T (e_v - m)`` (recomputed here from that embedding),
    keeping the first directions; the edit is ``W (I - Q Q^T)`` for the grown ``Q``; same seed, same patch."""
    from hirm.attacks.text import as_batch, encode, slot_id, with_slots
    from hirm.core import kv_proj

    encoder, tokenizer = model.text_encoder("text_encoder"), model.tokenizer("text_encoder")
    u = _basis(model, "cat", HARD.templates, HARD.contrast, HARD.rank)
    t = torch.eye(u.shape[0], dtype=torch.float64) - u @ u.T
    pool = kv_proj._pool(model, model.component("unet"), encoder, tokenizer, CAT[0], HARD)
    vector, losses = kv_proj.learned_embedding(
        model.component("unet"), encoder, tokenizer, CAT[0], HARD, pool, t
    )
    assert losses[-1] < losses[0]
    slotted = [x.replace("{concept}", "\x00") for x in HARD.templates]
    rows = [with_slots(tokenizer, x, "\x00", 1, slot_id(tokenizer)) for x in slotted]
    ids, mask = as_batch([r[0] for r in rows]), torch.tensor([r[1] for r in rows])
    with torch.no_grad():
        found = encode(encoder, ids, mask, vector.expand(2, 1, -1)).double()
    ref = sum(_rows(model, [x.replace("{concept}", w) for x in HARD.templates]) for w in HARD.contrast) / 2
    carried = ((found - ref) @ t).reshape(-1, u.shape[0])
    _, vecs = torch.linalg.eigh(carried.T @ carried)
    new = vecs[:, -HARD.harden_rank :]
    grown = torch.cat([u, new], dim=1)
    expected, _ = torch.linalg.qr(grown)

    patch = hirm.get_method("kv-proj").erase(model, CAT, HARD, progress=False)
    assert patch.metadata["removed_directions"] == 4
    (record,) = patch.metadata["hardening"]
    assert record["concept"] == "cat" and record["loss_last"] < record["loss_first"]
    t_grown = torch.eye(u.shape[0], dtype=torch.float64) - expected @ expected.T
    for name, w in _kv(model).items():
        torch.testing.assert_close(
            patch.tensors[f"unet/{name}"].double(), w.double() @ t_grown, atol=1e-5, rtol=1e-4
        )
    again = hirm.get_method("kv-proj").erase(model, CAT, HARD, progress=False)
    assert all(torch.equal(again.tensors[k], v) for k, v in patch.tensors.items())


KEYS = KVProjConfig(
    rank=3,
    key_rank=1,
    templates=("{concept}", "a photo of {concept}"),
    contrast=("", "dog"),
    harden_samples=3,
    ddim_steps=4,
)


def test_key_rank_blinds_the_values_to_every_direction_and_the_keys_to_the_one_the_unet_needs_most(model):
    """The values get ``W (I - Q Q^T)``; the keys ``W (I - q q^T)`` for the column ``q`` of ``Q`` whose removal
    alone brings the original U-Net's prediction for the concept closest to the contrast words' on the
    hardening's pool (``toward``, recomputed here); the record names it; same seed, same patch."""
    from hirm.core import kv_proj

    encoder, tokenizer = model.text_encoder("text_encoder"), model.tokenizer("text_encoder")
    unet = model.component("unet")
    u, _ = torch.linalg.qr(_basis(model, "cat", KEYS.templates, KEYS.contrast, KEYS.rank).flip(1))
    pool = kv_proj._pool(model, unet, encoder, tokenizer, CAT[0], KEYS)
    chosen = [KEYS.templates[i] for i in pool.template]
    named = _rows(model, [t.replace("{concept}", "cat") for t in chosen])
    ref = sum(_rows(model, [t.replace("{concept}", w) for t in chosen]) for w in KEYS.contrast) / 2
    with torch.no_grad():
        eps_m = unet(pool.x, pool.t, encoder_hidden_states=ref.float()).sample
        gap = (pool.target - eps_m).pow(2).mean()
        toward = []
        for j in range(KEYS.rank):
            q = u[:, j : j + 1]
            pred = unet(pool.x, pool.t, encoder_hidden_states=(named - named @ q @ q.T).float()).sample
            toward.append(float(1 - (pred - eps_m).pow(2).mean() / gap))
    best = max(range(KEYS.rank), key=toward.__getitem__)

    patch = hirm.get_method("kv-proj").erase(model, CAT, KEYS, progress=False)
    (record,) = patch.metadata["keys"]
    assert record["keys"] == [best]
    assert record["toward"] == pytest.approx(toward, abs=1e-3)
    assert patch.metadata["removed_directions"] == 3 and patch.metadata["key_directions"] == 1
    t_values = torch.eye(u.shape[0], dtype=torch.float64) - u @ u.T
    q = u[:, best : best + 1]
    t_keys = torch.eye(u.shape[0], dtype=torch.float64) - q @ q.T
    for name, w in _kv(model).items():
        expected = w.double() @ (t_keys if name.endswith("to_k.weight") else t_values)
        torch.testing.assert_close(patch.tensors[f"unet/{name}"].double(), expected, atol=1e-5, rtol=1e-4)
    again = hirm.get_method("kv-proj").erase(model, CAT, KEYS, progress=False)
    assert all(torch.equal(again.tensors[k], v) for k, v in patch.tensors.items())
