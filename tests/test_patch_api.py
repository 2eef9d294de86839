"""The patch API: strength (scale), exact removal, state_dict per component, one-line repr, and the
composition guards (duplicates, overlaps, non-finite values, stacking)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import hirm
from hirm.core.config import HiRMConfig
from hirm.core.patch import FORMAT, Patch, PatchConflictError, PatchMismatchError, remove_patch

FAST = HiRMConfig(steps=3, lr=1e-3, precision="fp32")


@pytest.fixture(scope="module")
def cats(sd_dir):
    return hirm.erase(sd_dir, ["Cats"], config=FAST, progress=False)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _encoder(sd_dir, dtype=torch.float32):
    return hirm.load_model(sd_dir, dtype=dtype).text_encoder()


def test_scale_is_base_plus_scaled_delta(sd_dir, cats):
    base = dict(_encoder(sd_dir).named_parameters())
    for scale in (0.0, 0.5, 2.0):
        params = dict(hirm.apply_patch(_encoder(sd_dir), cats, scale=scale).named_parameters())
        for key, value in cats.tensors.items():
            name = key.split("/", 1)[1]
            expected = base[name] + scale * (value - base[name])
            assert torch.allclose(params[name], expected, atol=1e-7), (scale, name)
    exact = dict(hirm.apply_patch(_encoder(sd_dir), cats, scale=1.0).named_parameters())
    assert all(torch.equal(exact[k.split("/", 1)[1]], v) for k, v in cats.tensors.items())
    with pytest.raises(ValueError, match="finite"):
        hirm.apply_patch(_encoder(sd_dir), cats, scale=float("nan"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_remove_patch_restores_the_exact_original(sd_dir, cats, dtype):
    pipe = hirm.load_pipeline(sd_dir, dtype=dtype)
    before = _state(pipe.text_encoder)
    hirm.apply_patch(pipe, cats, scale=0.7)
    assert any(not torch.equal(before[k], v) for k, v in pipe.text_encoder.state_dict().items())
    with pytest.raises(PatchMismatchError, match="already carries"):
        hirm.apply_patch(pipe, cats)  # stacking is refused; remove first
    remove_patch(pipe)
    assert all(torch.equal(before[k], v) for k, v in pipe.text_encoder.state_dict().items())
    with pytest.raises(PatchMismatchError, match="No hirm patch"):
        remove_patch(pipe)
    hirm.apply_patch(pipe, cats)  # and it can be applied again
    encoder = _encoder(sd_dir, dtype)
    original = _state(encoder)
    remove_patch(hirm.apply_patch(encoder, cats))
    assert all(torch.equal(original[k], v) for k, v in encoder.state_dict().items())
    from hirm.core.patch import apply_patches

    apply_patches(encoder, cats, keep_originals=False)  # permanent: nothing kept aside
    with pytest.raises(PatchMismatchError, match="cannot be undone"):
        remove_patch(encoder)


def test_state_dict_per_component_loads_with_strict_false(sdxl_dir):
    patch = hirm.erase(sdxl_dir, ["Cats"], config=FAST, progress=False)
    canonical = patch.state_dict("text_encoder_2")
    assert canonical and all("/" not in k for k in canonical)
    assert set(canonical) == {k.split("/", 1)[1] for k in patch.tensors if k.startswith("text_encoder_2/")}
    encoder = hirm.load_model(sdxl_dir).text_encoder("text_encoder_2")  # CLIPTextModelWithProjection
    state = patch.state_dict("text_encoder_2", encoder)
    result = encoder.load_state_dict(state, strict=False)
    assert not result.unexpected_keys  # nothing was silently skipped
    params = dict(encoder.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in state.items())
    with pytest.raises(KeyError, match="unet"):
        patch.state_dict("unet")


def test_repr_is_one_line(cats):
    text = repr(cats)
    assert "\n" not in text and len(text) < 200
    assert "hirm" in text and "Cats" in text and "text_encoder" in text and f"{cats.num_parameters:,}" in text


def test_duplicates_are_refused_even_when_overlaps_are_allowed(sd_dir, cats, tmp_path):
    encoder = _encoder(sd_dir)
    before = _state(encoder)
    copy = Patch.load(cats.save(tmp_path / "c.safetensors"))  # the same patch, loaded again
    for allow in (False, True):
        with pytest.raises(PatchConflictError, match="same as patch 0"):
            hirm.apply_patch(encoder, [cats, copy], allow_overlap=allow)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_non_finite_patches_are_refused_and_change_nothing(sd_dir, cats, tmp_path):
    tensors = {k: v.clone() for k, v in cats.tensors.items()}
    first = sorted(tensors)[0]
    tensors[first][0] = float("nan")
    path = Patch(tensors=tensors, metadata=cats.metadata).save(tmp_path / "nan.safetensors")
    encoder = _encoder(sd_dir)
    before = _state(encoder)
    with pytest.raises(PatchMismatchError, match="NaN or infinite"):
        hirm.apply_patch(encoder, path)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"method": "hirm"}), "lacks the base fingerprints"),
        (json.dumps({"method": "hirm", "base": {"fingerprints": {}}}), "lacks the base fingerprints"),
        (json.dumps({"base": {}}), "names no method"),
    ],
)
def test_damaged_patch_metadata_is_a_clear_error(cats, tmp_path, metadata, message):
    path = tmp_path / "bad.safetensors"
    save_file(dict(cats.tensors), str(path), metadata={"format": FORMAT, "hirm": metadata})
    with pytest.raises(ValueError, match=message):
        Patch.load(path)
