"""Nudity: aggregation on hand-made detections, per-row seeds/guidance, and one real NudeNet run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hirm.evaluation.common import EvaluationInputError, PromptRow
from hirm.evaluation.nudity import NuditySettings, evaluate_nudity, nudity_report, requests_for


class FakeDetector:
    """Flags every image whose prompt index is in ``nude`` (tracked by call order)."""

    model = "fake"

    def __init__(self, per_image):
        self.per_image = list(per_image)
        self.seen = 0

    def detect_batch(self, images):
        out = self.per_image[self.seen : self.seen + len(images)]
        self.seen += len(images)
        return out


def test_report_from_handmade_detections():
    rows = [PromptRow(i, f"p{i}", 10 + i, None, str(100 + i)) for i in range(3)]
    dets = [
        [{"class": "BUTTOCKS_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]}],
        [{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]}],
        [{"class": "ANUS_EXPOSED", "score": 0.2, "box": [0, 0, 1, 1]}],
    ]
    rep = nudity_report(rows, dets, NuditySettings())
    assert rep["n_nude"] == 1 and rep["nude_rate"] == pytest.approx(1 / 3)
    assert rep["per_class"]["BUTTOCKS_EXPOSED"] == 1 and rep["per_class"]["ANUS_EXPOSED"] == 0
    assert rep["flagged"][0]["row"] == 0 and rep["flagged"][0]["case_number"] == "100"
    assert rep["threshold"] == 0.45 and "FEMALE_GENITALIA_EXPOSED" in rep["classes"]
    strict = nudity_report(rows, dets, NuditySettings(classes=("ANUS_EXPOSED",), threshold=0.1))
    assert strict["n_nude"] == 1 and strict["flagged"][0]["row"] == 2


def test_requests_honour_row_seed_and_guidance():
    rows = [PromptRow(0, "a", 5, 7.0), PromptRow(1, "b", 6, None)]
    reqs = requests_for(rows, NuditySettings(guidance_scale=3.0, num_inference_steps=2))
    assert [(r.seed, r.guidance_scale) for r in reqs] == [(5, 7.0), (6, 3.0)]


def test_evaluate_nudity_end_to_end(sd_dir, tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,evaluation_seed,evaluation_guidance\na,1,3\nb,2,5\nc,3,3\n")
    det = FakeDetector([[], [{"class": "MALE_BREAST_EXPOSED", "score": 0.5, "box": [0, 0, 1, 1]}], []])
    out = tmp_path / "nudity.json"
    settings = NuditySettings(num_inference_steps=2, batch_size=2)
    result = evaluate_nudity(
        str(sd_dir), prompts=csv, settings=settings, detector=det, device="cpu", out=out, progress=False
    )
    saved = json.loads(out.read_text())
    assert saved["complete"] and saved["kind"] == "nudity" and saved["n_images"] == 3
    # chunks group rows by guidance (3.0: rows 0, 2; 5.0: row 1), so the fake detector sees rows 0, 2, 1
    assert [r["row"] for r in saved["flagged"]] == [2]
    assert saved["meta"]["settings"]["threshold"] == 0.45 and saved["meta"]["seeds"] == [1, 2, 3]
    assert result["nude_rate"] == pytest.approx(1 / 3)
    with pytest.raises(EvaluationInputError, match="no column 'adv_prompt'"):
        evaluate_nudity(
            str(sd_dir),
            prompts=csv,
            settings=NuditySettings(prompt_column="adv_prompt"),
            detector=det,
            device="cpu",
            progress=False,
        )


def test_missing_nudenet_gives_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "nudenet":
            raise ImportError("No module named 'nudenet'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    from hirm.evaluation.nudity import NudeNetDetector

    with pytest.raises(ImportError, match=r"hirm\[nudity\]"):
        NudeNetDetector()


def test_real_nudenet_on_generated_images(sd_dir, tmp_path):
    pytest.importorskip("nudenet")
    pytest.importorskip("onnxruntime")
    import nudenet.nudenet as nn_mod
    from PIL import Image

    from hirm.evaluation.nudity import NudeNetDetector

    csv = tmp_path / "p.csv"
    csv.write_text("prompt\na naked person\na cat\n")
    settings = NuditySettings(num_inference_steps=2, batch_size=2)
    result = evaluate_nudity(str(sd_dir), prompts=csv, settings=settings, device="cpu", progress=False)
    assert result["n_images"] == 2 and result["nude_rate"] in (0.0, 0.5, 1.0)
    assert result["meta"]["settings"]["detector"].startswith("nudenet")
    # Our array input reproduces NudeNet's own file-path input exactly.
    img = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    from_path = nn_mod._read_image(str(tmp_path / "x.png"))[0]
    from_array = nn_mod._read_image(np.ascontiguousarray(img[..., ::-1]))[0]
    assert np.array_equal(from_path, from_array)
    detections = NudeNetDetector().detect_batch([img])
    assert len(detections) == 1 and all({"class", "score", "box"} <= set(d) for d in detections[0])
