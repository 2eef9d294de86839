"""``hirm export``: single-file checkpoints read back by diffusers' own single-file loader, encoder
folders, and the model card.

The tiny single files are built from tiny encoders with :class:`hirm.export.Layout`; that the layout is
right is checked independently: diffusers' ``from_single_file`` machinery
(``create_diffusers_clip_model_from_ldm``) must read the original file back to the original encoder, and
the exported file to the patched encoder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import tiny
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from hirm.cli.main import app
from hirm.core.encoder import canonical_name
from hirm.core.patch import Patch, PatchMismatchError, apply_patches, make_patch
from hirm.export import LAYOUTS, ExportError, Layout, export_single_file, write_model_card

SD1, SD2 = LAYOUTS["text_encoder"][0], LAYOUTS["text_encoder"][1]
XL_L, XL_G = LAYOUTS["text_encoder"][2], LAYOUTS["text_encoder_2"][0]
OTHER_KEYS = {"model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.bias"}


def params(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {canonical_name(n): p.detach().clone() for n, p in encoder.named_parameters()}


def ldm_state(encoder: torch.nn.Module, layout: Layout) -> dict[str, torch.Tensor]:
    """The encoder's parameters in a single-file layout (q, k, v fused in that order for OpenCLIP)."""
    state, fused = {}, {}
    for name, value in params(encoder).items():
        slot = layout.slot(name)
        if slot.part is not None:
            fused.setdefault(slot.key, {})[slot.part] = value
        else:
            state[slot.key] = value.T.contiguous() if slot.transpose else value
    state.update({key: torch.cat([parts[i] for i in range(3)]) for key, parts in fused.items()})
    return state


def write_checkpoint(path: Path, states: list[dict[str, torch.Tensor]], dtype: torch.dtype) -> Path:
    torch.manual_seed(1)
    tensors = {k: v.to(dtype) for state in states for k, v in state.items()}
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(4, 4, 3, 3).to(dtype)
    tensors["first_stage_model.decoder.conv_in.bias"] = torch.randn(4).to(dtype)
    save_file(tensors, str(path), metadata={"format": "pt", "note": "tiny"})
    return path


def perturbed_patch(encoders: dict[str, torch.nn.Module], extra: tuple[str, ...] = ()) -> Patch:
    """A patch changing block 0 (and ``extra`` tensors) of each encoder by a random delta."""
    torch.manual_seed(2)
    originals, edited = {}, {}
    for component, encoder in encoders.items():
        for name, value in params(encoder).items():
            if name.startswith("encoder.layers.0.") or name in extra:
                originals[f"{component}/{name}"] = value
                edited[f"{component}/{name}"] = value + 0.05 * torch.randn_like(value)
    return make_patch(
        method="hirm",
        originals=originals,
        edited=edited,
        config={},
        concepts=[{"text": "Cats", "kind": "object", "target": {"kind": "random", "seed": 42}}],
        base={"source": "tiny"},
    )


def only(patch: Patch, component: str) -> Patch:
    """The part of ``patch`` that changes ``component``."""
    tensors = {k: v for k, v in patch.tensors.items() if k.startswith(component + "/")}
    metadata = json.loads(json.dumps(patch.metadata))
    metadata["base"]["fingerprints"] = {component: patch.fingerprints[component]}
    return Patch(tensors=tensors, metadata=metadata)


def read_back(path: Path, cls, config_dir: Path, subfolder: str) -> dict[str, torch.Tensor]:
    """The encoder diffusers' single-file loader builds from ``path`` (what from_single_file does)."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors.torch import load_file

    model = create_diffusers_clip_model_from_ldm(
        cls, load_file(str(path)), subfolder=subfolder, config=str(config_dir), local_files_only=True
    )
    return params(model)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], dtype=torch.float32) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name].to(dtype), b[name].to(dtype)), name


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("layout", "dtype"), [(SD1, torch.float16), (SD2, torch.float32)], ids=["sd1-fp16", "sd2-openclip-fp32"]
)
def test_single_file_round_trip_sd(layout, dtype, tmp_path):
    from transformers import CLIPTextModel

    encoder = tiny.text_encoder()
    encoder.save_pretrained(str(tmp_path / "cfg" / "text_encoder"))
    if dtype == torch.float16:  # the patch is made on the weights the file holds, as from a float16 download
        encoder = encoder.half().float()
    ckpt = write_checkpoint(tmp_path / "model.safetensors", [ldm_state(encoder, layout)], dtype)
    before = digest(ckpt)
    # the test file is what diffusers expects: read back, it is the encoder
    assert_same(read_back(ckpt, CLIPTextModel, tmp_path / "cfg", "text_encoder"), params(encoder), dtype)

    patch = perturbed_patch({"text_encoder": encoder}, extra=("final_layer_norm.weight",))
    out = export_single_file(patch, ckpt, tmp_path / "erased.safetensors")
    assert digest(ckpt) == before  # the input is never modified
    expected = params(apply_patches(encoder, [patch], component="text_encoder"))
    assert_same(read_back(out, CLIPTextModel, tmp_path / "cfg", "text_encoder"), expected, dtype)
    with safe_open(str(ckpt), "pt") as a, safe_open(str(out), "pt") as b:
        assert list(a.keys()) == list(b.keys())
        changed = {layout.slot(k.split("/", 1)[1]).key for k in patch.tensors}
        for key in a.keys():
            assert b.get_slice(key).get_dtype() == a.get_slice(key).get_dtype()
            same = torch.equal(a.get_tensor(key), b.get_tensor(key))
            assert same == (key not in changed), key
        assert b.metadata()["note"] == "tiny"
        assert json.loads(b.metadata()["hirm_patch"])["concepts"] == ["Cats"]


def test_single_file_round_trip_sdxl(tmp_path):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # CLIP-L and OpenCLIP bigG stand-ins of different widths, as in SDXL (diffusers tells them apart by width)
    first, second = (
        tiny.text_encoder(),
        tiny.text_encoder(1, projection=True, hidden_size=48, projection_dim=40),
    )
    first.save_pretrained(str(tmp_path / "cfg" / "text_encoder"))
    second.save_pretrained(str(tmp_path / "cfg" / "text_encoder_2"))
    ckpt = write_checkpoint(
        tmp_path / "xl.safetensors", [ldm_state(first, XL_L), ldm_state(second, XL_G)], torch.float32
    )
    assert_same(
        read_back(ckpt, CLIPTextModelWithProjection, tmp_path / "cfg", "text_encoder_2"), params(second)
    )
    patch = perturbed_patch(
        {"text_encoder": first, "text_encoder_2": second}, extra=("text_projection.weight",)
    )
    out = export_single_file(patch, ckpt, tmp_path / "out.safetensors")
    expected = params(apply_patches(second, [only(patch, "text_encoder_2")], component="text_encoder_2"))
    assert_same(read_back(out, CLIPTextModelWithProjection, tmp_path / "cfg", "text_encoder_2"), expected)
    expected = params(apply_patches(first, [only(patch, "text_encoder")], component="text_encoder"))
    assert_same(read_back(out, CLIPTextModel, tmp_path / "cfg", "text_encoder"), expected)


def test_single_file_refusals(tmp_path):
    encoder = tiny.text_encoder()
    ckpt = write_checkpoint(tmp_path / "m.safetensors", [ldm_state(encoder, SD1)], torch.float32)
    patch = perturbed_patch({"text_encoder": encoder})
    other = write_checkpoint(
        tmp_path / "o.safetensors", [ldm_state(tiny.text_encoder(5), SD1)], torch.float32
    )
    with pytest.raises(PatchMismatchError, match="not the base"):
        export_single_file(patch, other, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    export_single_file(patch, other, tmp_path / "x.safetensors", check_base=False)  # asked for explicitly
    with pytest.raises(ExportError, match="never modified"):
        export_single_file(patch, ckpt, ckpt, overwrite=True)
    bare = write_checkpoint(tmp_path / "unet.safetensors", [], torch.float32)
    with pytest.raises(ExportError, match="Cannot place"):
        export_single_file(patch, bare, tmp_path / "y.safetensors")
    unet = make_patch(method="uce", originals={"unet/a.weight": torch.zeros(1)}, edited={"unet/a.weight": torch.ones(1)},
                      config={}, concepts=[], base={})  # fmt: skip
    with pytest.raises(ExportError, match="hirm apply"):
        export_single_file(unet, ckpt, tmp_path / "z.safetensors")
    with pytest.raises(ExportError, match=r"\.ckpt"):
        export_single_file(patch, tmp_path / "model.ckpt", tmp_path / "z.safetensors")


def test_cli_exports_a_real_erasure(sd_dir, tmp_path):
    """hirm erase -> single file (diffusers reads it back as the patched encoder), encoder folder, card."""
    from transformers import CLIPTextModel

    import hirm
    from hirm.core.config import HiRMConfig

    runner = CliRunner()
    patch = hirm.erase(str(sd_dir), ["Cats"], config=HiRMConfig(steps=2, precision="fp32"), progress=False)
    patch_file = patch.save(tmp_path / "cats.safetensors")
    encoder = CLIPTextModel.from_pretrained(str(sd_dir / "text_encoder"))
    ckpt = write_checkpoint(tmp_path / "sd.safetensors", [ldm_state(encoder, SD1)], torch.float32)
    out = tmp_path / "sd-no-cats.safetensors"
    result = runner.invoke(
        app, ["export", "single-file", "-p", str(patch_file), "--checkpoint", str(ckpt), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    expected = params(apply_patches(encoder, [patch], component="text_encoder"))
    assert_same(read_back(out, CLIPTextModel, sd_dir, "text_encoder"), expected)
    again = runner.invoke(
        app, ["export", "single-file", "-p", str(patch_file), "--checkpoint", str(ckpt), "-o", str(out)]
    )
    assert again.exit_code == 2 and "exists" in again.output

    hub = tmp_path / "hub"
    result = runner.invoke(
        app, ["export", "encoder", "-p", str(patch_file), "-m", str(sd_dir), "-o", str(hub)]
    )
    assert result.exit_code == 0, result.output
    assert_same(params(CLIPTextModel.from_pretrained(str(hub / "text_encoder"))), expected)

    grid = tmp_path / "grid.png"
    from PIL import Image

    Image.new("RGB", (8, 8), "white").save(grid)
    result = runner.invoke(app, ["export", "card", "-p", str(patch_file), "--grid", str(grid),
                                 "--base-model", "me/tiny-sd", "-o", str(hub)])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = (hub / "README.md").read_text()
    assert (
        "![original vs erased](grid.png)" in text
        and "`text_encoder`" in text
        and "`hirm-patch.safetensors`" in text
    )
    assert (hub / "grid.png").is_file() and Patch.load(
        hub / "hirm-patch.safetensors"
    ).tensors.keys() == patch.tensors.keys()


def test_model_card_metadata_and_metrics(tmp_path):
    from huggingface_hub import ModelCard

    encoder = tiny.text_encoder()
    patch = perturbed_patch({"text_encoder": encoder})
    patch.metadata["base"]["source"] = "CompVis/stable-diffusion-v1-4"  # a hub id: becomes base_model
    patch.metadata.update(steps=100, lr=5e-4, precision="float32")
    grid = {"UA": 0.75, "n_target": 8, "IRA": 0.9, "n_in_domain": 10, "CRA": 1.0, "n_cross": 20, "AA": 0.8833}
    result = {
        "kind": "canvas", "complete": True, "target": "Cats", "domain": "object", "meta": {"model": "minicanvas"},
        "metrics": {"erased": {"grid": grid}}, "summary": {"erased": {"AA": grid["AA"]}},
    }  # fmt: skip
    (tmp_path / "result.json").write_text(json.dumps(result))
    readme = write_model_card(patch, tmp_path / "card", evaluation=tmp_path / "result.json")
    card = ModelCard.load(readme)
    assert card.data.base_model == "CompVis/stable-diffusion-v1-4" and card.data.erased_concepts == ["Cats"]
    assert card.data.pipeline_tag == "text-to-image" and "concept-erasure" in card.data.tags
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert values == {"UA": 75.0, "IRA": 90.0, "CRA": 100.0, "AA": 88.3}
    assert "75.0 % (n = 8, 95 % CI 40.9–92.9)" in card.text  # Wilson interval of 6 of 8
    assert "- **Optimizer steps:** 100" in card.text and "- **Learning rate:** 0.0005" in card.text
    assert "higher is better" in card.text
    with pytest.raises(FileExistsError):
        write_model_card(patch, tmp_path / "card")
