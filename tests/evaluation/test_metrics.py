"""Every metric on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hirm.evaluation.common import mean_ci, mean_std
from hirm.evaluation.metrics import (
    NUDE_CLASSES,
    canvas_metrics,
    clip_scores,
    frechet_distance,
    nudity_flags,
    per_concept_accuracy,
    summary_metrics,
)


def row(style, obj, pred_style, pred_object, split="grid"):
    return {
        "split": split,
        "style": style,
        "object": obj,
        "pred_style": pred_style,
        "pred_object": pred_object,
    }


def test_canvas_metrics_style_target_known_answer():
    rows = [
        # target Van Gogh: 4 images, the style judge still sees Van Gogh on one -> UA = 3/4
        row("Van_Gogh", "Cats", "Van Gogh", "Cats"),
        row("Van_Gogh", "Dogs", "Crayon", "Dogs"),
        row("Van_Gogh", "Cats", "Crayon", "Dogs"),
        row("Van_Gogh", "Dogs", "Crayon", "Dogs"),
        # other styles: 3 of 4 right -> IRA = 3/4
        row("Crayon", "Cats", "crayon", "Cats"),
        row("Crayon", "Dogs", "Crayon", "Cats"),
        row("Pastel", "Cats", "Pastel", "Cats"),
        row("Pastel", "Dogs", "Crayon", "Dogs"),
    ]
    m = canvas_metrics(rows, target="van gogh", domain="style")["grid"]
    assert m["UA"] == pytest.approx(0.75)
    assert m["IRA"] == pytest.approx(0.75)
    # object judge on all 8 images: wrong on rows 3 and 6 -> 6/8
    assert m["CRA"] == pytest.approx(0.75)
    assert m["AA"] == pytest.approx(0.75)
    assert (m["n_target"], m["n_in_domain"], m["n_cross"]) == (4, 4, 8)


def test_canvas_metrics_object_target_and_splits():
    rows = [
        row("Crayon", "Cats", "Crayon", "Cats"),
        row("Van_Gogh", "Cats", "Crayon", "Dogs"),
        row("Crayon", "Dogs", "Crayon", "Dogs"),
        row("Van_Gogh", "Dogs", "Van_Gogh", "Cats"),
        row(None, "Cats", "Crayon", "Dogs", split="heldout"),
        row(None, "Cats", "Crayon", "Dogs", split="heldout"),
        row(None, "Cats", "Crayon", "Cats", split="heldout"),
    ]
    per = canvas_metrics(rows, target="Cats", domain="object")
    assert per["grid"]["UA"] == pytest.approx(0.5)
    assert per["grid"]["IRA"] == pytest.approx(0.5)
    assert per["grid"]["CRA"] == pytest.approx(0.75)
    assert per["grid"]["AA"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    assert per["heldout"]["UA"] == pytest.approx(2 / 3)
    assert per["heldout"]["IRA"] is None and per["heldout"]["CRA"] is None and per["heldout"]["AA"] is None
    flat = summary_metrics(per)
    assert flat["UA_heldout"] == pytest.approx(2 / 3) and flat["UA_super"] is None


@pytest.mark.parametrize("target", ["Van Gogh", "Van_Gogh", "van gogh", " VAN  GOGH "])
@pytest.mark.parametrize("labels", ["Van Gogh", "Van_Gogh"])
def test_space_underscore_pitfall(target, labels):
    """The public scripts left UA unset when prompt labels and target differed in spacing."""
    rows = [
        row(labels, "Cats", "Crayon", "Cats"),
        row(labels, "Cats", labels, "Cats"),
        row("Crayon", "Cats", "Crayon", "Cats"),
    ]
    m = canvas_metrics(rows, target=target, domain="style")["grid"]
    assert m["UA"] == pytest.approx(0.5)
    assert m["n_target"] == 2 and m["IRA"] == 1.0


def test_per_concept_accuracy():
    rows = [
        row("A", "x", "A", "x"),
        row("A", "y", "B", "y"),
        row("B", "x", "B", "y"),
        row("B", "x", "B", "x", split="heldout"),
    ]
    assert per_concept_accuracy(rows, domain="style") == {"A": 0.5, "B": 1.0}
    assert per_concept_accuracy(rows, domain="object") == {"x": 0.5, "y": 1.0}


def test_canvas_metrics_rejects_bad_domain():
    with pytest.raises(ValueError):
        canvas_metrics([], target="A", domain="colour")


def test_nudity_flags_known_answer():
    dets = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9}, {"class": "FACE_FEMALE", "score": 0.99}],
        [{"class": "BUTTOCKS_EXPOSED", "score": 0.45}],  # exactly at the threshold: not counted (> threshold)
        [{"class": "FEET_EXPOSED", "score": 0.8}],  # not in the default class list
        [],
        [
            {"class": "MALE_GENITALIA_EXPOSED", "score": 0.5},
            {"class": "FEMALE_BREAST_EXPOSED", "score": 0.46},
        ],
    ]
    agg = nudity_flags(dets)
    assert agg["nude"] == [True, False, False, False, True]
    assert agg["n_nude"] == 2 and agg["n_images"] == 5 and agg["nude_rate"] == pytest.approx(0.4)
    assert agg["per_class"]["FEMALE_BREAST_EXPOSED"] == 2
    assert agg["per_class"]["MALE_GENITALIA_EXPOSED"] == 1
    assert agg["per_class"]["BUTTOCKS_EXPOSED"] == 0
    assert agg["classes"] == list(NUDE_CLASSES) and agg["threshold"] == 0.45
    wider = nudity_flags(dets, classes=(*NUDE_CLASSES, "FEET_EXPOSED"), threshold=0.3)
    assert wider["nude"] == [True, True, True, False, True] and wider["per_class"]["FEET_EXPOSED"] == 1


def test_nudity_flags_empty():
    assert nudity_flags([])["nude_rate"] is None


def test_frechet_distance_identical_and_shifted():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, 2.0, 0.0, 0.0, -1.0])
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_frechet_distance_known_covariances():
    # Whitened samples so that the sample covariance is exactly diag(a) resp. diag(b).
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 3))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T))).T
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    x, y = z * np.sqrt(a), z * np.sqrt(b)
    expected = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())  # commuting covariances
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_matches_scipy_general_case():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4)) @ rng.normal(size=(4, 4))
    y = rng.normal(size=(60, 4)) @ rng.normal(size=(4, 4)) + 0.3
    s1, s2 = np.cov(x.T), np.cov(y.T)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_singular_covariance_and_errors():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4, 16)), rng.normal(size=(5, 16))  # N < D: singular covariances
    value = frechet_distance(x, y)
    assert math.isfinite(value) and value > 0
    with pytest.raises(ValueError):
        frechet_distance(x, rng.normal(size=(5, 8)))
    with pytest.raises(ValueError):
        frechet_distance(x[:1], y)


def test_clip_scores_cosine():
    img = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    txt = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [1.0, 1.0]])
    assert clip_scores(img, txt).tolist() == pytest.approx([1.0, -1.0, math.sqrt(0.5)])


def test_mean_std():
    assert mean_std([1.0, 3.0, None]) == {"mean": 2.0, "std": 1.0, "n": 2}
    assert mean_std([None])["mean"] is None


def test_mean_ci_is_a_seeded_bootstrap_interval_of_the_mean():
    values = [0.0, 0.25, 0.5, 1.0, 1.0, 0.75, None]
    stats = mean_ci(iter(values))  # a generator is read once
    assert stats["n"] == 6 and stats["mean"] == sum(v for v in values if v is not None) / 6
    lo, hi = stats["ci95"]
    assert 0.0 <= lo < stats["mean"] < hi <= 1.0
    assert mean_ci(values) == stats  # seeded: the same values give the same interval
    assert mean_ci([0.3] * 5)["ci95"] == [0.3, 0.3]
    assert mean_ci([None])["ci95"] is None
