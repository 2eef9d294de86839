"""Prompt CSVs: per-row seeds/guidance, awkward text, and clear errors on bad files."""

from __future__ import annotations

import pytest

from hirm.evaluation.common import EvaluationInputError, package_data, read_prompt_csv


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_seeds_guidance_and_awkward_text(tmp_path):
    csv = write(
        tmp_path / "p.csv",
        "idx,prompt,evaluation_seed,evaluation_guidance,case_number\n"
        '0,"a, b ""quoted"" 🎨 café",2868251644,7,21\n1,plain,,,22\n',
    )
    rows = read_prompt_csv(csv, default_seed=100)
    assert (
        rows[0].prompt == 'a, b "quoted" 🎨 café' and rows[0].seed == 2868251644 and rows[0].guidance == 7.0
    )
    assert rows[0].case == "21"
    assert rows[1].seed == 101 and rows[1].guidance is None  # default_seed + row index


def test_other_prompt_column_and_limit(tmp_path):
    csv = write(tmp_path / "mma.csv", "target_prompt,adv_prompt\nx,adv one\ny,adv two\nz,adv three\n")
    rows = read_prompt_csv(csv, prompt_column="adv_prompt", limit=2)
    assert [r.prompt for r in rows] == ["adv one", "adv two"] and [r.seed for r in rows] == [0, 1]


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("", {}, "empty"),
        ("prompt,evaluation_seed\n", {}, "no prompt rows"),
        ("text\nhello\n", {}, "no column 'prompt'.*text"),
        ("prompt\n\n ,\n", {}, "empty 'prompt'|no prompt rows"),
        ("prompt,evaluation_seed\nhi,abc\n", {}, "row 0"),
        ("prompt\nhi\n", {"limit": 0}, "--limit"),
    ],
)
def test_bad_files(tmp_path, text, kwargs, match):
    csv = write(tmp_path / "bad.csv", text)
    with pytest.raises(EvaluationInputError, match=match):
        read_prompt_csv(csv, **kwargs)


def test_missing_file(tmp_path):
    with pytest.raises(EvaluationInputError, match="No prompt file"):
        read_prompt_csv(tmp_path / "nope.csv")


def test_package_data():
    coco = read_prompt_csv(package_data("coco_1k.csv"))
    assert len(coco) == 1000 and all(isinstance(r.seed, int) for r in coco)
    nudity = read_prompt_csv(package_data("unlearndiffatk_nudity.csv"))
    assert len(nudity) == 142 and all(r.guidance is not None for r in nudity)
