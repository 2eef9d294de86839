"""Utility: CLIP score and Fréchet distance with a tiny CLIP on a tiny pipeline."""

from __future__ import annotations

import json

import pytest

from hirm.evaluation.common import EvaluationInputError
from hirm.evaluation.utility import ClipScorer, UtilitySettings, evaluate_utility


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "coco.csv"
    path.write_text(
        "case_number,prompt,evaluation_seed\n1,a dog on a bench,11\n2,two trains,12\n3,a red bus,13\n"
        "4,a bowl of fruit,14\n"
    )
    return path


def test_utility_without_patch_is_zero_distance(sd_dir, clip_dir, prompts, tmp_path):
    settings = UtilitySettings(num_inference_steps=2, batch_size=2, limit=3)
    out = tmp_path / "u.json"
    result = evaluate_utility(
        str(sd_dir),
        clip=clip_dir,
        prompts=prompts,
        settings=settings,
        device="cpu",
        cache_dir=tmp_path / "cache",
        out=out,
        progress=False,
    )
    assert result["n_prompts"] == 3 and result["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert result["clip_score"]["erased"] == result["clip_score"]["original"]
    assert -1 <= result["clip_score"]["erased"] <= 1
    saved = json.loads(out.read_text())
    assert (
        saved["complete"] and saved["meta"]["seeds"] == [11, 12, 13] and saved["clip_model"] == str(clip_dir)
    )


def test_utility_with_patch(sd_dir, clip_dir, prompts, tmp_path, tiny_patch):
    settings = UtilitySettings(num_inference_steps=2, batch_size=4)
    result = evaluate_utility(
        str(sd_dir),
        patches=[tiny_patch],
        clip=clip_dir,
        prompts=prompts,
        settings=settings,
        device="cpu",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert result["frechet_distance"] > 0
    assert result["meta"]["patches"][0]["path"] == str(tiny_patch)
    assert len(result["rows"]) == 4


def test_clip_scorer_resizes_and_errors(clip_dir, tmp_path):
    import numpy as np

    scorer = ClipScorer.load(clip_dir)
    feats = scorer.image_features(np.zeros((2, 40, 30, 3), np.uint8))
    assert feats.shape == (2, 8)
    assert scorer.text_features(["a", "b c"]).shape == (2, 8)
    with pytest.raises(EvaluationInputError):
        ClipScorer.load(tmp_path)


def test_utility_needs_two_prompts(sd_dir, clip_dir, prompts):
    with pytest.raises(EvaluationInputError, match="at least 2"):
        evaluate_utility(
            str(sd_dir), clip=clip_dir, prompts=prompts, settings=UtilitySettings(limit=1), device="cpu"
        )
