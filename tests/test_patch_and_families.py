"""Patches (round trip, fingerprints, composition, atomic writes) and model families (SD 1.x, SDXL, SD3,
Flux, bare text encoders) through the real loaders."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import hirm
from hirm.adapters.families import UnsupportedModelError
from hirm.adapters.loading import ModelNotFoundError
from hirm.core.config import Concept, HiRMConfig, PromptTarget
from hirm.core.encoder import read_representation, tokenize
from hirm.core.patch import Patch, PatchMismatchError
from hirm.io import OutputExistsError

FAST = HiRMConfig(steps=3, lr=1e-3)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    """Canonical names (no ``text_model.`` prefix) of the entries that differ from ``before``."""
    from hirm.core.encoder import canonical_name

    return {canonical_name(k) for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_patch_round_trip_is_exact(sd_dir, tmp_path):
    patch = hirm.erase(sd_dir, ["Cats"], config=FAST, progress=False)
    path = patch.save(tmp_path / "cats.safetensors")
    loaded = Patch.load(path)
    assert loaded.metadata == json.loads(json.dumps(patch.metadata))
    assert loaded.tensors.keys() == patch.tensors.keys()
    assert all(torch.equal(loaded.tensors[k], patch.tensors[k]) for k in patch.tensors)
    a = hirm.apply_patch(hirm.load_model(sd_dir).text_encoder(), patch, component="text_encoder")
    b = hirm.apply_patch(hirm.load_model(sd_dir).text_encoder(), path, component="text_encoder")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    for key, value in patch.tensors.items():  # applied values are the patch values, bit for bit
        assert torch.equal(dict(a.named_parameters())[key.split("/", 1)[1]], value)
    meta = loaded.metadata
    assert meta["method"] == "hirm" and meta["concepts"][0]["text"] == "Cats"
    assert meta["config"]["steps"] == 3 and meta["hirm_version"] == hirm.__version__
    assert set(meta["final_loss"]) == {"text_encoder"} and meta["base"]["family"] == "sd"


def test_saving_never_overwrites_silently_and_leaves_no_partial_file(sd_dir, tmp_path):
    patch = hirm.erase(sd_dir, ["Cats"], config=FAST, progress=False)
    path = tmp_path / "p.safetensors"
    patch.save(path)
    stamp = path.stat().st_mtime_ns
    with pytest.raises(OutputExistsError):
        patch.save(path)
    assert path.stat().st_mtime_ns == stamp
    patch.save(path, overwrite=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError):
        patch.save(blocker / "p.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["file", "p.safetensors"]


def test_fingerprint_mismatch_is_refused_and_changes_nothing(sd_dir, sdxl_dir, tmp_path):
    patch = hirm.erase(sd_dir, ["Cats"], config=FAST, progress=False)
    other = hirm.load_model(sdxl_dir).text_encoder()  # same architecture, other weights
    before = _state(other)
    with pytest.raises(PatchMismatchError, match="different base weights"):
        hirm.apply_patch(other, patch, component="text_encoder")
    assert not _changed(before, other)
    # A patch cannot be stacked onto an already patched model either.
    encoder = hirm.apply_patch(hirm.load_model(sd_dir).text_encoder(), patch, component="text_encoder")
    with pytest.raises(PatchMismatchError):
        hirm.apply_patch(encoder, patch, component="text_encoder")


def test_composition_rule(sd_dir):
    """Disjoint patches compose exactly in any order; overlapping ones are refused unless allowed, and
    then add their deltas to the base."""
    model = hirm.load_model(sd_dir)
    a = hirm.erase(model, ["Cats"], config=FAST, progress=False)
    b = hirm.erase(model, ["Dogs"], config=FAST, progress=False)
    base = {k: p.detach().clone() for k, p in model.text_encoder().named_parameters()}
    fresh = hirm.load_model(sd_dir).text_encoder()
    with pytest.raises(hirm.PatchConflictError, match=r"hirm erase -c A -c B"):
        hirm.apply_patch(fresh, [a, b], component="text_encoder")
    assert not _changed(_state(model.text_encoder()), fresh)
    options = {"component": "text_encoder", "allow_overlap": True}
    ab = hirm.apply_patch(hirm.load_model(sd_dir).text_encoder(), [a, b], **options)
    ba = hirm.apply_patch(hirm.load_model(sd_dir).text_encoder(), [b, a], **options)
    params = dict(ab.named_parameters())
    for key in a.tensors:
        name = key.split("/", 1)[1]
        assert torch.allclose(
            params[name],
            base[name] + (a.tensors[key] - base[name]) + (b.tensors[key] - base[name]),
            atol=1e-7,
        )
        assert torch.equal(params[name], dict(ba.named_parameters())[name])

    # Disjoint: SD patch with only attention + one with only MLP equals each alone on its tensors.
    attn = hirm.erase(model, ["Cats"], config=HiRMConfig(steps=3, trainable="attn-only"), progress=False)
    mlp = hirm.erase(model, ["Cats"], config=HiRMConfig(steps=3, trainable="mlp-only"), progress=False)
    both = hirm.apply_patch(hirm.load_model(sd_dir).text_encoder(), [mlp, attn], component="text_encoder")
    params = dict(both.named_parameters())
    for patch in (attn, mlp):
        assert all(torch.equal(params[k.split("/", 1)[1]], v) for k, v in patch.tensors.items())


def test_merge_patches_refuses_overlap(sd_dir):
    model = hirm.load_model(sd_dir)
    a = hirm.erase(model, ["Cats"], config=FAST, progress=False)
    with pytest.raises(ValueError, match="overlap"):
        hirm.merge_patches([a, a])


def test_merge_patches_of_one_component_fingerprints_the_union_from_the_base(sd_dir):
    """Two patches changing different tensors of one component (attention only, MLP only): merged with
    the model's originals they make one patch that applies and equals applying both; without them, or
    with other weights, merging is refused instead of writing a fingerprint no model matches."""
    from hirm.core.multi import base_tensors

    model = hirm.load_model(sd_dir)
    attn = hirm.erase(model, ["Cats"], config=HiRMConfig(steps=3, trainable="attn-only"), progress=False)
    mlp = hirm.erase(model, ["Cats"], config=HiRMConfig(steps=3, trainable="mlp-only"), progress=False)
    assert attn.components == mlp.components == ("text_encoder",)
    with pytest.raises(ValueError, match="all change component 'text_encoder'.*base="):
        hirm.merge_patches([attn, mlp])
    keys = [*attn.tensors, *mlp.tensors]
    merged = hirm.merge_patches([attn, mlp], base=base_tensors(model, keys))
    one = hirm.apply_patch(hirm.load_model(sd_dir).text_encoder(), merged, component="text_encoder")
    two = hirm.apply_patch(hirm.load_model(sd_dir).text_encoder(), [attn, mlp], component="text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values()))
    # each part keeps its own losses (the later one does not overwrite the earlier's)
    assert merged.metadata["final_loss"] == {
        "text_encoder (part 1: hirm)": attn.metadata["final_loss"]["text_encoder"],
        "text_encoder (part 2: hirm)": mlp.metadata["final_loss"]["text_encoder"],
    }
    assert set(merged.metadata["losses"]) == set(merged.metadata["final_loss"])
    other = {k: v + 1 for k, v in base_tensors(model, keys).items()}
    with pytest.raises(ValueError, match="made for other 'text_encoder' weights"):
        hirm.merge_patches([attn, mlp], base=other)


def test_split_patch_gives_back_each_merged_part_as_made(sd_dir, tmp_path):
    """``split_patch``: a saved and reloaded HiRM + UCE merge splits into the two patches it was made
    from (tensors, method, base fingerprints), each applying alone; a patch of one method is refused."""
    from hirm.core.patch import split_patch

    model = hirm.load_model(sd_dir)
    made = [
        hirm.erase(model, ["Cats"], config=FAST, progress=False),
        hirm.erase(model, ["Cats"], method="uce", progress=False),
    ]
    path = hirm.merge_patches(made).save(tmp_path / "both.safetensors")
    parts = split_patch(hirm.Patch.load(path))
    assert [p.metadata["method"] for p in parts] == ["hirm", "uce"]
    for part, original in zip(parts, made, strict=True):
        assert set(part.tensors) == set(original.tensors)
        assert all(torch.equal(part.tensors[k], v) for k, v in original.tensors.items())
        assert part.fingerprints == original.fingerprints
        hirm.apply_patch(hirm.load_pipeline(sd_dir), part)
    with pytest.raises(ValueError, match="not a merge of different methods"):
        split_patch(made[0])


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_families_erase_apply_and_generate(family, request, tmp_path):
    path = request.getfixturevalue(f"{family}_dir")
    model = hirm.load_model(path)
    expected = {"sd": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2"),
                "sd3": ("text_encoder", "text_encoder_2"), "flux": ("text_encoder",)}[family]  # fmt: skip
    assert model.family.name == family and model.family.encoders == expected
    patch = hirm.erase(model, ["Van Gogh"], kind="style", config=FAST, progress=False)
    assert patch.components == expected
    assert model.family.untouched == {"sd3": ("text_encoder_3",), "flux": ("text_encoder_2",)}.get(family, ())
    pipe = hirm.load_pipeline(path)
    before = {
        name: _state(getattr(pipe, name))
        for name in pipe.components
        if isinstance(getattr(pipe, name), torch.nn.Module)
    }
    hirm.apply_patch(pipe, patch)
    for name, state in before.items():
        changed = _changed(state, getattr(pipe, name))
        assert bool(changed) == (name in expected), name
        if changed:
            assert changed == {k.split("/", 1)[1] for k in patch.tensors if k.startswith(name + "/")}
    kwargs = {"max_sequence_length": 16} if family in ("sd3", "flux") else {}
    out = pipe(
        "a cat",
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    assert out.images.shape == (1, 16, 16, 3) and torch.isfinite(torch.as_tensor(out.images)).all()


def test_sdxl_encoders_are_selectable(sdxl_dir):
    patch = hirm.erase(sdxl_dir, ["Cats"], config=FAST, components=["text_encoder_2"], progress=False)
    assert patch.components == ("text_encoder_2",)
    with pytest.raises(ValueError, match="not CLIP text encoders"):
        hirm.erase(sdxl_dir, ["Cats"], config=FAST, components=["unet"], progress=False)


def test_bare_text_encoder_directory_and_drop_in_encoders(sd_dir, tmp_path):
    model = hirm.load_model(sd_dir / "text_encoder")
    assert model.family.name == "text-encoder" and model.family.encoders == ("text_encoder",)
    patch = hirm.erase(model, ["Cats"], config=FAST, progress=False)
    pipe = hirm.load_pipeline(sd_dir, patches=[patch])  # a bare-encoder patch fits the pipeline
    out = hirm.save_encoders(sd_dir, patch, tmp_path / "edited")
    from transformers import CLIPTextModel

    reloaded = CLIPTextModel.from_pretrained(str(out / "text_encoder"))
    assert all(
        torch.equal(a, b)
        for a, b in zip(reloaded.state_dict().values(), pipe.text_encoder.state_dict().values())
    )
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    # the edited encoder, loaded back, reads "Cats" differently and a prompt the same way up to the edit
    tok = model.tokenizer()
    ids = tokenize(tok, ["Cats"])
    with torch.no_grad():
        assert not torch.equal(
            read_representation(reloaded, ids, HiRMConfig().read),
            read_representation(model.text_encoder(), ids, HiRMConfig().read),
        )


def test_save_patched_writes_a_loadable_pipeline(sd_dir, tmp_path):
    patch = hirm.erase(sd_dir, ["Cats"], config=FAST, progress=False)
    out = hirm.save_patched(sd_dir, [patch], tmp_path / "patched")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    params = dict(pipe.text_encoder.named_parameters())
    assert all(torch.equal(params[k.split("/", 1)[1]], v) for k, v in patch.tensors.items())
    with pytest.raises(OutputExistsError):
        hirm.save_patched(sd_dir, [patch], out)


def test_bad_models_are_clear_errors(sd_dir, tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="No model"):
        hirm.load_model(tmp_path / "missing")
    weird = tmp_path / "kandinsky"
    shutil.copytree(sd_dir, weird)
    index = json.loads((weird / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (weird / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match="SDXL, SD3 and Flux"):
        hirm.load_model(weird)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(UnsupportedModelError, match="BertModel"):
        hirm.load_model(tmp_path / "bert")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        hirm.load_model("nobody/no-such-model")


def test_hirm_s_on_sdxl_uses_each_encoders_own_target(sdxl_dir):
    model = hirm.load_model(sdxl_dir)
    patch = hirm.erase(
        model, [Concept("Van Gogh", "style", PromptTarget("painting"))], config=FAST, progress=False
    )
    losses = patch.metadata["final_loss"]
    assert (
        set(losses) == {"text_encoder", "text_encoder_2"}
        and losses["text_encoder"] != losses["text_encoder_2"]
    )
