"""Judges for real pipelines: a converted timm ViT classifier, zero-shot CLIP, UnlearnCanvas's lists and its
photo class, and ``hirm eval canvas`` on a (tiny) SD pipeline with them. Tiny random models only."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from hirm.evaluation.canvas_grid import PHOTO_CLASS, Canvas, read_names
from hirm.evaluation.common import EvaluationInputError
from hirm.evaluation.judge_models import ClassifierJudge, ClipJudge, class_prompts, load_judges
from hirm.evaluation.metrics import canvas_metrics

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert_unlearncanvas_classifier.py"
WIDTH, DEPTH, HEADS, PATCH, SIDE, MLP = 16, 2, 2, 8, 32, 24


def convert_script():
    spec = importlib.util.spec_from_file_location("convert_unlearncanvas_classifier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timm_vit_state(num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under timm ``VisionTransformer`` names (what UnlearnCanvas's checkpoint holds)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.3

    n = (SIDE // PATCH) ** 2
    state = {
        "cls_token": r(1, 1, WIDTH),
        "pos_embed": r(1, n + 1, WIDTH),
        "patch_embed.proj.weight": r(WIDTH, 3, PATCH, PATCH),
        "patch_embed.proj.bias": r(WIDTH),
        "norm.weight": 1 + r(WIDTH),
        "norm.bias": r(WIDTH),
        "head.weight": r(num_classes, WIDTH),
        "head.bias": r(num_classes),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        state |= {
            b + "norm1.weight": 1 + r(WIDTH), b + "norm1.bias": r(WIDTH),
            b + "attn.qkv.weight": r(3 * WIDTH, WIDTH), b + "attn.qkv.bias": r(3 * WIDTH),
            b + "attn.proj.weight": r(WIDTH, WIDTH), b + "attn.proj.bias": r(WIDTH),
            b + "norm2.weight": 1 + r(WIDTH), b + "norm2.bias": r(WIDTH),
            b + "mlp.fc1.weight": r(MLP, WIDTH), b + "mlp.fc1.bias": r(MLP),
            b + "mlp.fc2.weight": r(WIDTH, MLP), b + "mlp.fc2.bias": r(WIDTH),
        }  # fmt: skip
    return state


def timm_vit_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """timm's ViT forward written out (patchify, class token, pre-norm blocks, final norm, head on the
    class token); ``x`` (N, 3, SIDE, SIDE) already normalised -> logits (N, C)."""
    s = state
    h = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=PATCH)
    h = h.flatten(2).transpose(1, 2)  # (N, L, D)
    h = torch.cat([s["cls_token"].expand(len(x), -1, -1), h], dim=1) + s["pos_embed"]
    for i in range(DEPTH):
        b = f"blocks.{i}."
        y = F.layer_norm(h, (WIDTH,), s[b + "norm1.weight"], s[b + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(y, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (HEADS, WIDTH // HEADS)).transpose(1, 2) for t in (q, k, v))
        a = ((q @ k.transpose(-1, -2)) / (WIDTH // HEADS) ** 0.5).softmax(-1) @ v
        h = h + F.linear(a.transpose(1, 2).flatten(2), s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
        y = F.layer_norm(h, (WIDTH,), s[b + "norm2.weight"], s[b + "norm2.bias"], eps=1e-6)
        h = h + F.linear(F.gelu(F.linear(y, s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"])), s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"])  # fmt: skip
    h = F.layer_norm(h, (WIDTH,), s["norm.weight"], s["norm.bias"], eps=1e-6)
    return F.linear(h[:, 0], s["head.weight"], s["head.bias"])


def converted(tmp: Path, classes: list[str], seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A timm checkpoint saved as UnlearnCanvas does ({"model_state_dict": ...}), converted by the script."""
    state = timm_vit_state(len(classes), seed)
    checkpoint = tmp / f"judge{seed}.pth"
    torch.save({"model_state_dict": state, "epoch": 3}, checkpoint)
    names = tmp / f"classes{seed}.txt"
    names.write_text("\n".join(classes) + "\n")
    out = tmp / f"judge{seed}"
    convert_script().main(["--checkpoint", str(checkpoint), "--classes", str(names), "-o", str(out), "--heads", str(HEADS)])  # fmt: skip
    return out, state


def test_the_converted_classifier_computes_what_timm_computes(tmp_path):
    classes = ["Van_Gogh", "Crayon", PHOTO_CLASS]
    folder, state = converted(tmp_path, classes)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    judge = ClassifierJudge.load(folder)
    assert judge.classes == tuple(classes) and judge.size == (SIDE, SIDE)
    images = torch.rand(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    expected = timm_vit_forward(state, (images - 0.5) / 0.5).softmax(
        -1
    )  # UnlearnCanvas's Normalize(0.5, 0.5)
    torch.testing.assert_close(judge(images), expected, atol=1e-5, rtol=1e-4)
    # other resolutions are resized to the model's 32 x 32 first
    assert judge(torch.rand(2, 3, 48, 40)).shape == (2, 3)


def test_conversion_refuses_a_class_list_of_the_wrong_length(tmp_path):
    torch.save({"model_state_dict": timm_vit_state(3)}, tmp_path / "c.pth")
    with pytest.raises(SystemExit, match="3 outputs but 20 class names"):
        convert_script().main(["--checkpoint", str(tmp_path / "c.pth"), "--classes", "unlearncanvas-object",
                               "-o", str(tmp_path / "out"), "--heads", str(HEADS)])  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_a_classifier_folder_without_preprocessing_or_safetensors_is_refused(tmp_path):
    folder, _ = converted(tmp_path, ["a", "b"])
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(EvaluationInputError, match="no preprocessor_config.json"):
        ClassifierJudge.load(folder)


def test_the_zero_shot_clip_judge_is_clips_own_image_text_softmax(clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    from hirm.evaluation.utility import ClipScorer, _resize_crop

    names = ["Cats", "Dogs", "Sea"]
    judge = ClipJudge(ClipScorer.load(clip_dir), names, class_prompts(names, "object"))
    assert judge.prompts == ("a photo of Cats", "a photo of Dogs", "a photo of Sea")
    images = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    model, tok = CLIPModel.from_pretrained(str(clip_dir)).eval(), AutoTokenizer.from_pretrained(str(clip_dir))
    text = tok(list(judge.prompts), padding="max_length", max_length=77, return_tensors="pt")
    pixels = (_resize_crop(images, 16) - 0.5) / 0.5
    with torch.no_grad():
        logits = model(
            input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels
        )
    torch.testing.assert_close(judge(images), logits.logits_per_image.softmax(-1), atol=1e-5, rtol=1e-4)


def test_class_prompts_and_the_photo_class():
    assert class_prompts(["Van_Gogh", PHOTO_CLASS], "style") == ["an image in Van Gogh style", "a photo"]
    assert class_prompts(["Cats"], "object", "a {name} drawing") == ["a Cats drawing"]
    with pytest.raises(EvaluationInputError, match="needs \\{name\\}"):
        class_prompts(["Cats"], "object", "a drawing")


def test_unlearncanvas_lists_and_files(tmp_path):
    uc = Canvas.unlearncanvas()
    assert len(uc.styles) == 51 and len(uc.objects) == 20 and uc.ira_excluded == (PHOTO_CLASS,)
    assert not uc.in_ira("seed images") and uc.in_ira("Van Gogh")
    with pytest.raises(EvaluationInputError, match="photo class"):
        uc.erasable("Seed Images")
    styles = tmp_path / "styles.txt"
    styles.write_text("# my styles\nVan Gogh | painting\n\nCrayon   # a comment\nSeed_Images\n")
    canvas = Canvas.from_lists(read_names(styles, "styles"), ["Cats | animal"])
    assert canvas.styles == ("Van Gogh", "Crayon", "Seed_Images") and canvas.ira_excluded == ("Seed_Images",)
    assert canvas.style_super == {"Van Gogh": "painting"} and not canvas.has_supers
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(EvaluationInputError, match="lists no styles"):
        read_names(tmp_path / "empty.txt", "styles")
    with pytest.raises(EvaluationInputError, match="No styles file"):
        read_names(tmp_path / "missing.txt", "styles")


def test_ira_leaves_the_photo_class_out_and_cra_keeps_it():
    rows = [  # target style A; B recognised, the photo class not; every object recognised but the photo row's
        {"split": "grid", "style": "A", "object": "Cats", "pred_style": "B", "pred_object": "Cats"},
        {"split": "grid", "style": "B", "object": "Cats", "pred_style": "B", "pred_object": "Cats"},
        {"split": "grid", "style": PHOTO_CLASS, "object": "Cats", "pred_style": "B", "pred_object": "Dogs"},
    ]
    kept = canvas_metrics(rows, target="A", domain="style", ira_excluded=[PHOTO_CLASS])["grid"]
    assert (kept["IRA"], kept["n_in_domain"], kept["UA"]) == (1.0, 1, 1.0)
    assert (kept["CRA"], kept["n_cross"]) == (2 / 3, 3)
    assert canvas_metrics(rows, target="A", domain="style")["grid"]["IRA"] == 0.5  # as if it were a style


def test_load_judges_loads_one_clip_for_both_domains(clip_dir, tmp_path):
    canvas = Canvas(("Van_Gogh", "Crayon"), ("Cats", "Dogs"))
    judges = load_judges({"style": f"clip:{clip_dir}", "object": f"clip:{clip_dir}"}, canvas)
    assert judges["style"].scorer is judges["object"].scorer
    assert judges["style"].classes == ("Van_Gogh", "Crayon")
    with pytest.raises(EvaluationInputError, match="No object judge"):
        load_judges({"style": f"clip:{clip_dir}"}, canvas)


def test_eval_canvas_on_a_real_pipeline_with_a_classifier_and_a_clip_judge(
    sd_dir, clip_dir, tiny_patch, tmp_path
):
    from hirm.cli.main import app

    styles = ["Van_Gogh", "Crayon", PHOTO_CLASS]
    style_judge, _ = converted(tmp_path, styles)
    (tmp_path / "styles.txt").write_text("\n".join(styles))
    (tmp_path / "objects.txt").write_text("Cats\nDogs\n")
    out = tmp_path / "run"
    args = ["eval", "canvas", "-m", str(sd_dir), "-c", "van gogh", "-p", str(tiny_patch),
            "--style-judge", str(style_judge), "--judge", f"clip:{clip_dir}",
            "--styles", str(tmp_path / "styles.txt"), "--objects", str(tmp_path / "objects.txt"),
            "--seeds", "1", "--sampler-steps", "2", "--height", "16", "--width", "16", "--no-heldout",
            "--device", "cpu", "--precision", "fp32", "--no-cache", "-q", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = " ".join(result.output.split())
    assert "│ IRA" in table and "(n=2," in table and "style judge: classifier" in table
    saved = json.loads((out / "result.json").read_text())
    assert saved["judges"]["object"].startswith("zero-shot CLIP") and saved["ira_excluded"] == [PHOTO_CLASS]
    grid = saved["metrics"]["erased"]["grid"]  # 3 styles x 2 objects x 1 seed
    assert (grid["n_target"], grid["n_in_domain"], grid["n_cross"]) == (
        2,
        2,
        6,
    )  # the photo row is out of IRA
    assert "super" not in saved["metrics"]["erased"]  # no super-category words in the lists: no super split
    as_json = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "run2"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["summary"]["erased"]["UA"] == saved["summary"]["erased"]["UA"]


def test_eval_canvas_on_a_real_pipeline_needs_judges_and_refuses_the_photo_class(sd_dir, clip_dir, tmp_path):
    from hirm.cli.main import app

    result = CliRunner().invoke(app, ["eval", "canvas", "-m", str(sd_dir), "-c", "Cats", "--device", "cpu"])
    assert result.exit_code == 2 and "A real pipeline needs judges" in result.output
    result = CliRunner().invoke(
        app, ["eval", "canvas", "-m", str(sd_dir), "-c", "Seed Images", "--judge", f"clip:{clip_dir}",
              "--device", "cpu", "-o", str(tmp_path / "x")]
    )  # fmt: skip
    assert result.exit_code == 2 and "photo class" in result.output and not (tmp_path / "x").exists()
