"""End-to-end canvas evaluation on a tiny random SD pipeline with hand-made judges."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import hirm
from hirm.core.patch import Patch
from hirm.evaluation.canvas import CanvasEvaluator, evaluate_canvas, patched
from hirm.evaluation.canvas_grid import UnknownConceptError
from hirm.evaluation.generation import (
    ImageCache,
    Request,
    generate_batch,
    make_chunks,
    model_fingerprint,
    run_generation,
)
from hirm.evaluation.judges import JudgeMismatchError, to_float_images
from hirm.io import OutputExistsError


def run(sd_dir, canvas, judges, settings, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return evaluate_canvas(
        str(sd_dir), canvas=canvas, judges=judges, settings=settings, device="cpu", progress=False, **kw
    )


def test_canvas_result_file(sd_dir, canvas, judges, settings, tmp_path, tiny_patch):
    out = tmp_path / "run"
    result = run(sd_dir, canvas, judges, settings, tmp_path, target="van gogh", patches=[tiny_patch], out=out)
    saved = json.loads((out / "result.json").read_text())
    assert saved["kind"] == "canvas" and saved["complete"] is True
    assert saved["target"] == "Van_Gogh" and saved["domain"] == "style"
    meta = saved["meta"]
    assert meta["model"] == str(sd_dir) and meta["hirm_version"] == hirm.__version__ and meta["date"]
    assert "torch threads" in meta["machine"]  # the machine in words, next to every time
    assert meta["seeds"] == [1, 2] and meta["settings"]["num_inference_steps"] == 2
    assert meta["patches"][0]["fingerprints"] == Patch.load(tiny_patch).fingerprints
    assert meta["settings"]["scheduler"]["class"] == "DDIMScheduler"
    for run_name in ("original", "erased"):
        summary = saved["summary"][run_name]
        assert set(summary) == {"UA", "IRA", "CRA", "AA", "UA_heldout", "UA_super"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in summary.values())
        # the metrics agree with the saved rows
        rows = saved["rows"][run_name]
        target_rows = [r for r in rows if r["split"] == "grid" and r["style"] == "Van_Gogh"]
        ua = 1 - np.mean([r["pred_style"] == "Van Gogh" for r in target_rows])
        assert summary["UA"] == pytest.approx(ua)
    assert len(saved["rows"]["erased"]) == 8 + 4 + 4  # grid 2x2x2, held-out + super: target rows only
    # before/after contact sheets on the same seeds: every seed, the target row first, held-out + super too
    sheets = saved["sheets"]
    assert {(s["run"], s["split"], s["seed"]) for s in sheets} == {
        (r, split, seed)
        for r in ("original", "erased")
        for split in ("grid", "heldout", "super")
        for seed in (1, 2)
    }
    from PIL import Image

    for sheet in sheets:
        h, w = sheet["cell"]
        with Image.open(out / sheet["file"]) as picture:
            assert picture.size == (w * len(sheet["cols"]), h * len(sheet["rows"]))
        assert sheet["rows"][0] == "Van_Gogh" and not sheet["missing"]
        # samples=1: the target and one retained style in the grid; held-out/super: the target only
        assert len(sheet["rows"]) == (2 if sheet["split"] == "grid" else 1) and sheet["cols"] == [
            "Cats",
            "Dogs",
        ]
    pairs = {}
    for sheet in sheets:
        pairs.setdefault((sheet["split"], sheet["template"], sheet["seed"]), {})[sheet["run"]] = sheet["file"]
    assert all((out / p["original"]).read_bytes() != (out / p["erased"]).read_bytes() for p in pairs.values())
    assert saved["meta"]["patches"][0]["losses"]["text_encoder"] and saved["meta"]["patches"][0]["steps"] == 3
    assert result["summary"] == saved["summary"]
    with pytest.raises(OutputExistsError):
        run(sd_dir, canvas, judges, settings, tmp_path, target="Cats", out=out)


def test_original_images_are_cached_and_reused(sd_dir, canvas, judges, settings, tmp_path):
    first = run(sd_dir, canvas, judges, settings, tmp_path, target="Cats")
    assert first["timing"]["generated"] > 0 and first["timing"]["cached"] == 0
    second = run(sd_dir, canvas, judges, settings, tmp_path, target="Crayon")
    assert second["timing"]["generated"] == 0 and second["timing"]["cached"] == first["timing"]["generated"]
    assert second["rows"]["original"][0]["pred_style"] == first["rows"]["original"][0]["pred_style"]
    pngs = list((tmp_path / "cache").rglob("*.png"))
    assert len(pngs) == first["timing"]["generated"]


def test_a_copy_of_the_model_shares_the_cache_and_a_changed_file_does_not(
    sd_dir, canvas, judges, settings, tmp_path
):
    """The cache is keyed by the model's content: a fresh clone (new path, new mtimes) hits it."""
    first = run(sd_dir, canvas, judges, settings, tmp_path, target="Cats")
    copy = tmp_path / "clone"
    shutil.copytree(sd_dir, copy)  # new path and modification times, same bytes
    again = run(copy, canvas, judges, settings, tmp_path, target="Cats")  # the same cache_dir
    assert again["timing"]["generated"] == 0 and again["timing"]["cached"] == first["timing"]["generated"]
    assert model_fingerprint(copy) == model_fingerprint(sd_dir)
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("{", '{"_note": "edited",', 1))
    assert model_fingerprint(copy) != model_fingerprint(sd_dir)


def test_patch_changes_images_and_is_restored(sd_dir, canvas, judges, settings, tiny_patch):
    pipe = hirm.load_pipeline(str(sd_dir))
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    req = [Request("A Cats image in Crayon style.", 1, 3.0, 2)]
    original = generate_batch(pipe, req)
    with patched(pipe, [Patch.load(tiny_patch)]):
        erased = generate_batch(pipe, req)
    assert not np.array_equal(original, erased)
    after = pipe.text_encoder.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert np.array_equal(generate_batch(pipe, req), original)


def test_per_image_seeds_do_not_depend_on_neighbours(sd_dir):
    pipe = hirm.load_pipeline(str(sd_dir))
    a = Request("a cat", 7, 3.0, 2)
    b = Request("a dog", 8, 3.0, 2)
    alone = generate_batch(pipe, [a])[0]
    with_other = generate_batch(pipe, [a, b])[0]
    # same seed -> same image up to float batching noise (uint8 quantisation: at most 1 level)
    assert np.abs(alone.astype(int) - with_other.astype(int)).max() <= 1


def test_distinct_prompts_encoded_once_give_the_pipelines_images(sd_dir):
    """generate_batch encodes each distinct prompt once (SD 1.x/2.x); every image must be the one the
    pipeline makes from the prompt strings, in the requests' order, with or without a negative prompt."""
    pipe = hirm.load_pipeline(str(sd_dir))
    encoded: list[int] = []  # the number of texts of each encoding
    encode = pipe.encode_prompt

    def counting(prompts, *args, **kwargs):
        if kwargs.get("prompt_embeds") is None:
            encoded.append(len(prompts))
        return encode(prompts, *args, **kwargs)

    pipe.encode_prompt = counting
    prompts = ["a cat", "a dog in the snow", "a cat", "a cat", "a dog in the snow"]
    for negative in (None, "blurry"):
        reqs = [Request(p, 10 + i, 3.0, 2, negative_prompt=negative) for i, p in enumerate(prompts)]
        encoded.clear()
        ours = generate_batch(pipe, reqs)
        assert encoded == [2, 1]  # two distinct prompts, one negative
        theirs = pipe(
            prompt=prompts,
            negative_prompt=[negative or ""] * len(prompts),
            generator=[torch.Generator().manual_seed(r.seed) for r in reqs],
            guidance_scale=3.0,
            num_inference_steps=2,
            output_type="np",
        ).images
        theirs = np.clip(np.round(theirs * 255), 0, 255).astype(np.uint8)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    no_guidance = [Request(p, 10 + i, 1.0, 2) for i, p in enumerate(prompts)]
    encoded.clear()
    generate_batch(pipe, no_guidance)
    assert encoded == [2]  # no classifier-free guidance: no negative prompt to encode


def test_bf16_sampling_is_autocast_and_a_separate_group(sd_dir, tmp_path):
    pipe = hirm.load_pipeline(str(sd_dir))
    fp32 = Request("a cat", 7, 3.0, 2)
    bf16 = Request("a cat", 7, 3.0, 2, precision="bf16")
    a, b = generate_batch(pipe, [fp32])[0], generate_batch(pipe, [bf16])[0]
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    assert np.array_equal(generate_batch(pipe, [bf16])[0], b)  # deterministic
    assert pipe.unet.dtype == torch.float32  # weights untouched
    assert fp32.group() != bf16.group()
    assert make_chunks([fp32, bf16], 8) == [[0], [1]]
    cache = ImageCache(tmp_path, "m")
    assert cache.path(fp32, {}) != cache.path(bf16, {})
    with pytest.raises(ValueError, match="precision"):
        Request("a cat", 7, 3.0, 2, precision="fp8")


def test_chunks_are_fixed_and_grouped():
    reqs = [Request(f"p{i}", i, 7.5 if i % 2 else 5.0, 2) for i in range(7)]
    chunks = make_chunks(reqs, 2)
    assert chunks == [[0, 2], [4, 6], [1, 3], [5]]
    with pytest.raises(ValueError):
        make_chunks(reqs, 0)


def test_run_generation_keep_and_cache(sd_dir, tmp_path):
    pipe = hirm.load_pipeline(str(sd_dir))
    reqs = [Request(f"prompt {i}", i, 3.0, 2) for i in range(3)]
    cache = ImageCache(tmp_path, "model")
    scores, kept, timing = run_generation(
        pipe,
        reqs,
        score_fn=lambda imgs: [int(i.sum()) for i in imgs],
        batch_size=2,
        cache=cache,
        keep=[1],
        progress=False,
    )
    assert set(kept) == {1} and scores[1] == int(kept[1].sum()) and timing.generated == 3
    again, _, timing2 = run_generation(
        pipe,
        reqs,
        score_fn=lambda imgs: [int(i.sum()) for i in imgs],
        batch_size=2,
        cache=cache,
        progress=False,
    )
    assert again == scores and timing2.generated == 0 and timing2.cached == 3
    assert to_float_images(kept[1][None]).shape == (1, 3, 16, 16)


def test_bad_inputs(sd_dir, canvas, judges, settings, tmp_path):
    with pytest.raises(UnknownConceptError):
        run(sd_dir, canvas, judges, settings, tmp_path, target="Monet")
    wrong = {"style": judges["style"], "object": judges["style"]}
    with pytest.raises(JudgeMismatchError, match="object judge cannot recognise"):
        CanvasEvaluator(None, canvas=canvas, judges=wrong, settings=settings)
    with pytest.raises(Exception, match="pass the concept lists and judges"):
        evaluate_canvas(str(sd_dir), target="Cats", device="cpu")
