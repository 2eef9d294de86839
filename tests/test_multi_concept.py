"""Multi-concept strategies (``hirm.core.multi``) and the benchmark that tabulates them
(``benchmarks/multi_concept.py``), on the tiny SD pipeline with hand-made judges."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import hirm
from hirm.core.config import Concept, HiRMConfig, PromptTarget
from hirm.core.multi import STRATEGIES, anchor_prompts, erase_many
from hirm.core.patch import component_parameters
from hirm.evaluation.canvas_grid import Canvas
from hirm.evaluation.judges import FunctionJudge

CONFIG = HiRMConfig(steps=3, lr=1e-2, precision="fp32")
CONCEPTS = [Concept("Cats", target=PromptTarget("animal")), Concept("Dogs", target=PromptTarget("animal")),
            Concept("Trees", target=PromptTarget("plant"))]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model(sd_dir):
    return hirm.load_model(sd_dir)


def _benchmark(name: str):
    """A script of ``benchmarks/`` imported as a module."""
    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _benchmark("multi_concept")


@pytest.fixture
def kept_by_call(monkeypatch):
    """What each ``hirm.core.multi.erase_many`` call was told to keep (the calls still run)."""
    import hirm.core.multi as multi

    calls, real = [], multi.erase_many

    def spy(*args, keep=(), **kwargs):
        calls.append(list(keep))
        return real(*args, keep=keep, **kwargs)

    monkeypatch.setattr(multi, "erase_many", spy)
    return calls


def _base(model):
    return {
        f"text_encoder/{n}": p.detach().clone() for n, p in component_parameters(model.text_encoder()).items()
    }


def test_joint_and_balanced_are_one_hirm_run(model):
    joint = erase_many(model, CONCEPTS, CONFIG, strategy="joint", progress=False)
    direct = hirm.erase(model, CONCEPTS, config=CONFIG, progress=False)
    assert all(torch.equal(joint.tensors[k], direct.tensors[k]) for k in direct.tensors)
    assert joint.metadata["multi"] == {"strategy": "joint", "runs": 1}
    balanced = erase_many(model, CONCEPTS, CONFIG, strategy="balanced", progress=False)
    assert balanced.metadata["config"]["concept_weighting"] == "balanced"
    assert not all(torch.equal(balanced.tensors[k], direct.tensors[k]) for k in direct.tensors)


@pytest.mark.parametrize(("strategy", "weight"), [("per-concept", 1.0), ("average", 1 / 3)])
def test_separate_runs_add_or_average_their_deltas(model, strategy, weight):
    """per-concept = base + sum of the separately trained deltas; average = the paper's weight average
    of the separately trained encoders = base + mean delta."""
    patch = erase_many(model, CONCEPTS, CONFIG, strategy=strategy, progress=False)
    parts = [hirm.erase(model, [c], config=CONFIG, progress=False) for c in CONCEPTS]
    base = _base(model)
    assert patch.tensors.keys() == parts[0].tensors.keys()
    for key, value in patch.tensors.items():
        expected = base[key] + weight * sum(p.tensors[key] - base[key] for p in parts)
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    if strategy == "average":  # literally the mean of the three encoders' weights
        for key, value in patch.tensors.items():
            torch.testing.assert_close(value, sum(p.tensors[key] for p in parts) / 3, rtol=0, atol=1e-6)
    assert [c["text"] for c in patch.metadata["concepts"]] == ["Cats", "Dogs", "Trees"]
    assert patch.metadata["multi"]["runs"] == 3
    hirm.apply_patch(
        hirm.load_model(model.path).text_encoder(), patch, component="text_encoder"
    )  # fits the base


def test_anchored_preserves_the_targets_in_the_templates(model):
    config = HiRMConfig(steps=2, lr=1e-2, templates=("{concept}", "a photo of {concept}"), precision="fp32")
    assert anchor_prompts(CONCEPTS, config.templates) == (
        "animal",
        "a photo of animal",
        "plant",
        "a photo of plant",
    )
    patch = erase_many(model, CONCEPTS, config, strategy="balanced-anchored", progress=False)
    saved = patch.metadata["config"]
    assert saved["preserve"] == ["animal", "a photo of animal", "plant", "a photo of plant"]
    assert (saved["preserve_weight"], saved["concept_weighting"]) == (1.0, "balanced")
    with pytest.raises(ValueError, match="PromptTargets"):
        erase_many(model, [Concept("Cats")], CONFIG, strategy="anchored", progress=False)
    with pytest.raises(ValueError, match="erase_many.strategy"):
        erase_many(model, CONCEPTS, CONFIG, strategy="merge", progress=False)


def test_wilson_interval_and_grid_metrics_on_known_rows(bench):
    from hirm.evaluation.metrics import wilson_interval

    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # textbook values for 8/10
    assert wilson_interval(0, 0) is None
    rows = [  # erase objects Cats, Dogs; Trees retained
        {"style": "Pastel", "object": "Cats", "pred_style": "Pastel", "pred_object": "Trees"},  # erased: miss
        {
            "style": "Rust",
            "object": "Cats",
            "pred_style": "Pastel",
            "pred_object": "Cats",
        },  # erased: still a cat
        {"style": "Pastel", "object": "Dogs", "pred_style": "Pastel", "pred_object": "Cats"},  # erased: miss
        {"style": "Rust", "object": "Trees", "pred_style": "Rust", "pred_object": "Trees"},  # retained: hit
    ]
    m = bench.grid_metrics(rows, ["Cats", "Dogs"], "object")
    assert (m["UA"]["value"], m["UA"]["n"]) == (2 / 3, 3)
    assert m["UA_per_concept"] == {"Cats": 0.5, "Dogs": 1.0}
    assert (m["IRA"]["value"], m["IRA"]["n"]) == (1.0, 1)
    assert (m["CRA"]["value"], m["CRA"]["n"]) == (0.75, 4)
    # the style kept in the erased objects' images, and in the retained object's
    assert (m["CRA_erased"]["value"], m["CRA_erased"]["n"]) == (2 / 3, 3)
    assert (m["CRA_kept"]["value"], m["CRA_kept"]["n"]) == (1.0, 1)
    assert m["meets_goal"] is False
    # pooled over runs like the other metrics; a table written before the split has none to pool
    pooled = bench._pool([{**m, "erase_s": 1.0}, {**m, "erase_s": 1.0}], ["Cats", "Dogs"])
    assert (pooled["CRA_erased"]["n"], pooled["CRA_erased"]["value"]) == (6, 2 / 3)
    old = {k: v for k, v in m.items() if k != "CRA_kept"}
    assert "CRA_kept" not in bench._pool([{**m, "erase_s": 1.0}, {**old, "erase_s": 1.0}], ["Cats", "Dogs"])


def _judge(classes, channels):
    def fn(images):
        means = images.mean(dim=(2, 3))
        return torch.stack([means[:, c] for c in channels], dim=1).mul(50).softmax(-1)

    return FunctionJudge(classes, fn)


@pytest.fixture
def world(monkeypatch):
    """A 4 x 4 canvas with hand-made judges, returned wherever the benchmark asks for the world's."""
    canvas = Canvas(("Van_Gogh", "Crayon", "Pastel", "Rust"), ("Cats", "Dogs", "Trees", "Birds"),
                    {"Van_Gogh": "painting", "Crayon": "drawing", "Pastel": "painting", "Rust": "pattern"},
                    {"Cats": "animal", "Dogs": "animal", "Trees": "plant", "Birds": "animal"})  # fmt: skip
    judges = {"style": _judge(canvas.styles, (0, 1, 2, 0)), "object": _judge(canvas.objects, (2, 1, 0, 1))}
    import hirm.evaluation.canvas as canvas_module

    monkeypatch.setattr(canvas_module, "default_canvas_and_judges", lambda *a: (canvas, judges))
    return canvas


def test_benchmark_writes_one_row_per_strategy_with_counts_and_intervals(bench, world, sd_dir, tmp_path):
    """The tiny budget end to end on the tiny pipeline: JSON + markdown, strategies as rows."""
    out = tmp_path / "mc"
    result = bench.main(["--out", str(out), "--model", str(sd_dir), "--budget", "tiny", "--count", "5",
                         "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    saved = json.loads((out / "multi_concept.json").read_text())
    assert saved["command"].startswith("python benchmarks/multi_concept.py")
    for domain in ("object", "style"):
        block = saved["domains"][domain]
        assert block["erased"] == list(world.names(domain))[:2] and block["note"] is None  # tiny: 2 concepts
        assert block["kept"] == list(world.names(domain))[2:]
        assert list(block["rows"]) == ["original", *STRATEGIES]
        for row in block["rows"].values():
            # one seed: 2 erased x 4 others = 8 UA images, 2 x 4 = 8 IRA images, 16 CRA images
            assert (row["UA"]["n"], row["IRA"]["n"], row["CRA"]["n"]) == (8, 8, 16)
            for metric in ("UA", "IRA", "CRA"):
                lo, hi = row[metric]["ci95"]
                assert 0 <= lo <= row[metric]["value"] <= hi <= 1
    assert result["domains"]["object"]["rows"]["joint"]["erase_s"] > 0
    table = (out / "multi_concept.md").read_text()
    assert "| object | average |" in table and "| style | preserved |" in table and "(n=8)" in table
    assert "its IRA is measured on concepts it was told to keep" in table
    assert table.count("| domain | strategy | UA") == 1  # one table, both domains
    assert table.count("| domain | strategy | CRA on the erased") == 1  # and one of the CRA split
    assert "- objects erased (2): Cats, Dogs; kept (2): Trees, Birds" in table
    with pytest.raises(SystemExit, match="already exists"):  # a one-line error, not a traceback
        bench.main(["--out", str(out), "--model", str(sd_dir), "--budget", "tiny"])


def test_keep_other_domain_preserves_the_cra_concepts_too(bench, world, sd_dir, tmp_path, kept_by_call):
    """``--keep-other-domain``: ``preserved`` is told to keep the other domain's concepts as well, and
    its row says so by its name and its note."""
    out = tmp_path / "mc"
    saved = bench.main(["--out", str(out), "--model", str(sd_dir), "--budget", "tiny", "--strategies",
                        "preserved", "--keep-other-domain", "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert kept_by_call == [["Trees", "Birds", "Van Gogh", "Crayon", "Pastel", "Rust"],
                            ["Pastel", "Rust", "Cats", "Dogs", "Trees", "Birds"]]  # fmt: skip
    assert list(saved["domains"]["object"]["rows"]) == ["original", "preserved-both"]
    assert saved["keep_other_domain"] is True
    table = (out / "multi_concept.md").read_text()
    assert "| style | preserved-both |" in table and "its CRA too is measured on concepts" in table


def test_preserve_weight_reaches_the_preserved_strategy_and_is_recorded(
    bench, world, sd_dir, tmp_path, monkeypatch
):
    """``--preserve-weight W``: the preserved strategy trains its preserve term with weight W (the patch's
    config says so), the JSON and the table record it, and a weight <= 0 is refused in one line."""
    import hirm.core.multi as multi

    weights, real = [], multi.erase_many

    def spy(*args, **kwargs):
        patch = real(*args, **kwargs)
        weights.append((kwargs["anchor_weight"], patch.metadata["config"]["preserve_weight"]))
        return patch

    monkeypatch.setattr(multi, "erase_many", spy)
    out = tmp_path / "mc"
    saved = bench.main(["--out", str(out), "--model", str(sd_dir), "--budget", "tiny", "--domains", "object",
                        "--strategies", "preserved", "--preserve-weight", "2.5",
                        "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert weights == [(2.5, 2.5)]
    assert saved["preserve_weight"] == 2.5
    assert "preserve term: 2.5." in (out / "multi_concept.md").read_text()
    with pytest.raises(SystemExit, match="--preserve-weight must be > 0"):
        bench.main(["--out", str(tmp_path / "bad"), "--model", str(sd_dir), "--budget", "tiny",
                    "--preserve-weight", "0"])  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_keep_sentences_pair_kept_concepts_in_templates_the_grid_does_not_use(
    bench, world, sd_dir, tmp_path, kept_by_call
):
    """``--keep-sentences``: every concept of the other domain is paired with two kept ones (each kept one
    used equally often), never an erased one, in the world's training templates other than the grid's;
    ``preserved`` is told to keep them besides the bare names, and the JSON and the table say so."""
    from hirm.evaluation.canvas_grid import build_items
    from hirm.world.concepts import CANVAS_TEMPLATE

    sentences = bench.keep_sentences(world, ["Pastel", "Rust"], "style")
    assert len(sentences) == 8
    for obj in ("Cats", "Dogs", "Trees", "Birds"):
        assert sum(obj in s for s in sentences) == 2
    assert [sum(k in s for s in sentences) for k in ("Pastel", "Rust", "Van Gogh", "Crayon")] == [4, 4, 0, 0]
    grid = {item.prompt for item in build_items(world, templates=(CANVAS_TEMPLATE,), seeds=(1,))}
    assert not grid & set(sentences)
    assert sentences[:4] == [
        "A Pastel style image of Cats.",
        "Cats in Rust style",
        "a picture of Dogs, Pastel style",
        "Rust Dogs",
    ]

    out = tmp_path / "mc"
    saved = bench.main(["--out", str(out), "--model", str(sd_dir), "--budget", "tiny", "--domains", "style",
                        "--strategies", "preserved", "--keep-other-domain", "--keep-sentences",
                        "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    kept = saved["domains"]["style"]["kept"]
    assert kept_by_call == [["Pastel", "Rust", "Cats", "Dogs", "Trees", "Birds",
                             *bench.keep_sentences(world, kept, "style")]]  # fmt: skip
    assert saved["keep_sentences"] is True
    assert "keeps sentences pairing kept concepts" in (out / "multi_concept.md").read_text()
    with pytest.raises(SystemExit, match="add --keep-other-domain"):
        bench.main(["--out", str(tmp_path / "bad"), "--model", str(sd_dir), "--budget", "tiny",
                    "--keep-sentences"])  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_partner_frames_name_the_other_domain_and_keep_only_this_domain_in_them(
    bench, world, sd_dir, tmp_path, monkeypatch
):
    """``--templates partners``: each erased concept is trained bare and in frames that each name one
    concept of the other domain (the world's training templates naming both, in turn, never the grid's);
    ``preserved`` keeps the domain's kept concepts in the same frames and the other domain's bare."""
    import hirm.core.multi as multi
    from hirm.evaluation.canvas_grid import build_items
    from hirm.world.concepts import CANVAS_TEMPLATE

    frames = bench.partner_frames(world, "style", 4)
    assert frames == (
        "A {concept} style image of Cats.",
        "Dogs in {concept} style",
        "a picture of Trees, {concept} style",
        "{concept} Birds",
    )
    grid = {item.prompt for item in build_items(world, templates=(CANVAS_TEMPLATE,), seeds=(1,))}
    assert not grid & {f.replace("{concept}", s) for f in frames for s in ("Van Gogh", "Pastel")}
    assert bench.partner_frames(world, "object", 2) == (
        "A Van Gogh style image of {concept}.",
        "{concept} in Pastel style",
    )

    calls, real = [], multi.erase_many

    def spy(model, concepts, config, *, keep=(), **kwargs):
        calls.append((config, list(keep)))
        return real(model, concepts, config, keep=keep, **kwargs)

    monkeypatch.setattr(multi, "erase_many", spy)
    import hirm.api

    uce_keeps, real_erase = [], hirm.api.erase

    def erase_spy(model, concepts, *, config, **kwargs):
        uce_keeps.append(config.preserve)
        return real_erase(model, concepts, config=config, **kwargs)

    monkeypatch.setattr(hirm.api, "erase", erase_spy)
    out = tmp_path / "mc"
    saved = bench.main(["--out", str(out), "--model", str(sd_dir), "--budget", "tiny", "--domains", "style",
                        "--strategies", "preserved", "--keep-other-domain", "--templates", "partners",
                        "--uce", "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    ((config, keep),) = calls
    assert config.templates == ("{concept}", *bench.partner_frames(world, "style"))
    assert keep == ["Pastel", "Rust"] and config.preserve == ("Cats", "Dogs", "Trees", "Birds")
    # UCE's preserve set is not templated: it keeps every kept concept of both domains by name
    assert uce_keeps == [("Pastel", "Rust", "Cats", "Dogs", "Trees", "Birds")]
    assert saved["partner_frames"] == bench.PARTNER_FRAMES
    assert saved["domains"]["style"]["templates"] == list(config.templates)
    assert "in frames naming the other domain" in (out / "multi_concept.md").read_text()


def test_aim_row_writes_erased_concepts_as_their_super_category(bench, world, sd_dir, tmp_path):
    """``--aim``: the erased concepts' prompts name the super-category instead (labels unchanged), every
    other prompt is the original's; ``--strategies none`` leaves only the reference rows."""
    from hirm.evaluation.canvas_grid import build_items

    items = build_items(world, templates=("A {object} image in {style} style.",), seeds=(1,))
    rewritten = bench.aim_items(world, items, ["Cats", "Trees"], "object")
    changed = {(a.prompt, b.prompt) for a, b in zip(items, rewritten, strict=True) if a != b}
    assert ("A Cats image in Van Gogh style.", "A animal image in Van Gogh style.") in changed
    assert ("A Trees image in Rust style.", "A plant image in Rust style.") in changed
    assert len(changed) == 8 and all(
        b.object in ("Cats", "Trees") for a, b in zip(items, rewritten) if a != b
    )
    styles = bench.aim_items(world, items, ["Crayon"], "style")
    assert {b.prompt for a, b in zip(items, styles) if a != b} == {
        f"A {o} image in drawing style." for o in ("Cats", "Dogs", "Trees", "Birds")
    }
    out = tmp_path / "aim"
    saved = bench.main(["--out", str(out), "--model", str(sd_dir), "--budget", "tiny", "--strategies", "none",
                        "--aim", "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    for domain in ("object", "style"):
        rows = saved["domains"][domain]["rows"]
        assert list(rows) == ["original", bench.AIM_ROW]
        assert (rows[bench.AIM_ROW]["UA"]["n"], rows[bench.AIM_ROW]["CRA"]["n"]) == (8, 16)
        # the kept concepts' prompts are untouched
        assert rows[bench.AIM_ROW]["IRA"] == rows["original"]["IRA"]
    assert "edits no model" in (out / "multi_concept.md").read_text()


def test_empty_target_misdirects_toward_the_empty_prompt_and_its_aim_leaves_the_word_out(bench, world):
    """``--target empty``: every concept's target is the empty prompt's read-out; its ``--aim`` row leaves
    the erased concept's word out of the prompt; a random target has no aim (one-line error)."""
    from hirm.evaluation.canvas_grid import build_items

    concepts = bench.concepts_for(world, ["Cats", "Trees"], "object", "empty")
    assert [(c.text, c.target) for c in concepts] == [("Cats", PromptTarget("")), ("Trees", PromptTarget(""))]
    items = build_items(world, templates=("A {object} image in {style} style.",), seeds=(1,))
    rewritten = bench.aim_items(world, items, ["Cats"], "object", "empty")
    changed = {(a.prompt, b.prompt) for a, b in zip(items, rewritten, strict=True) if a != b}
    assert ("A Cats image in Van Gogh style.", "A  image in Van Gogh style.") in changed
    assert all(b.label("object") == "Cats" for a, b in zip(items, rewritten) if a != b)
    with pytest.raises(SystemExit, match="--aim needs --target super or empty"):
        bench.run_table("unused", aim=True, target="random")


def _table(seeds, ua_hits, per_concept, erased=("Cats", "Dogs"), target="super"):
    """A ``multi_concept.json`` as ``run_table`` writes it: one object row, 20 UA images per seed."""
    n = 20 * len(seeds)
    row = {
        "UA": {"value": ua_hits / n, "n": n, "ci95": [0, 1]},
        "IRA": {"value": 1.0, "n": n, "ci95": [0, 1]},
        "CRA": {"value": 0.5, "n": 2 * n, "ci95": [0, 1]},
        "UA_per_concept": dict(zip(erased, per_concept, strict=True)),
        "meets_goal": False,
        "erase_s": 2.0,
    }
    return {
        "hirm_config": {"steps": 200}, "target": target, "keep_other_domain": True, "uce_tokens": "paper",
        "goal": {"UA": 0.9}, "machine": f"m{seeds[0]}",
        "meta": {"seeds": list(seeds), "settings": {"seeds": list(seeds), "num_inference_steps": 25}},
        "domains": {"object": {"erased": list(erased), "kept": ["Trees"], "note": None, "rows": {"preserved-both": row}}},
    }  # fmt: skip


def test_merge_pools_hits_over_disjoint_seeds_and_refuses_what_would_double_count(bench, tmp_path):
    """``--merge``: hits and n add up, per-concept UA is weighted by its images, intervals recomputed;
    the same seed twice, another target or other erased concepts are refused."""
    from hirm.evaluation.metrics import wilson_interval

    merged = bench.merge_tables([_table([1], 18, [1.0, 0.8]), _table([2, 3], 30, [0.9, 0.6])])
    row = merged["domains"]["object"]["rows"]["preserved-both"]
    assert (row["UA"]["n"], row["UA"]["value"]) == (60, 48 / 60)
    assert row["UA"]["ci95"] == pytest.approx(wilson_interval(48, 60))
    assert (row["CRA"]["n"], row["CRA"]["value"]) == (120, 0.5)
    # Cats: 10 images at 1.0 and 20 at 0.9
    assert row["UA_per_concept"]["Cats"] == pytest.approx((10 * 1.0 + 20 * 0.9) / 30)
    assert merged["meta"]["seeds"] == [1, 2, 3] and merged["domains"]["object"]["seeds"] == [1, 2, 3]
    assert merged["machine"] == ["m1", "m2"]
    refusals = [
        ([_table([1], 18, [1, 0.8]), _table([1, 2], 30, [1, 0.5])], "a seed appears in two object tables"),
        ([_table([1], 18, [1, 0.8]), _table([2], 18, [1, 0.8], target="empty")], "differ in target"),
        ([_table([1], 18, [1, 0.8]), _table([2], 18, [1, 0.8], erased=("Cats", "Birds"))], "erase other"),
        ([_table([1], 18, [1, 0.8])], "at least two"),
        (
            [_table([1], 18, [1, 0.8]), {**_table([2], 18, [1, 0.8]), "keep_sentences": True}],
            "keep_sentences",
        ),
    ]
    # a table written before a setting was recorded ran with its default
    recorded = {**_table([2], 18, [1, 0.8]), "keep_sentences": False, "preserve_weight": 1.0}
    assert bench.merge_tables([_table([1], 18, [1, 0.8]), recorded])["domains"]["object"]["rows"]
    for tables, message in refusals:
        with pytest.raises(SystemExit, match=message):
            bench.merge_tables(tables)
    # from the command line: result directories in, one table out
    dirs = []
    for i, table in enumerate([_table([1], 18, [1.0, 0.8]), _table([2, 3], 30, [0.9, 0.6])]):
        dirs.append(tmp_path / f"part{i}")
        dirs[-1].mkdir()
        (dirs[-1] / "multi_concept.json").write_text(json.dumps(table))
    saved = bench.main(["--out", str(tmp_path / "all"), "--merge", *map(str, dirs)])
    assert saved["domains"]["object"]["rows"]["preserved-both"]["UA"]["n"] == 60
    assert "| object | preserved-both | 80.0 [" in (tmp_path / "all" / "multi_concept.md").read_text()
    with pytest.raises(SystemExit, match="No .*multi_concept.json"):
        bench.main(["--out", str(tmp_path / "x"), "--merge", str(dirs[0]), str(tmp_path)])
    # its own outputs are replaced only with --overwrite; a file it did not write never is (one-line errors)
    again = ["--out", str(tmp_path / "all"), "--merge", *map(str, dirs)]
    with pytest.raises(SystemExit, match="already exists"):
        bench.main(again)
    assert bench.main([*again, "--overwrite"])["domains"]["object"]["rows"]["preserved-both"]["UA"]["n"] == 60
    with pytest.raises(SystemExit, match="not written by hirm"):
        bench.main(["--out", str(dirs[0]), "--merge", *map(str, dirs), "--overwrite"])


def test_uce_rows_erase_all_at_once_and_combine_with_each_hirm_row(
    bench, world, sd_dir, tmp_path, monkeypatch
):
    """``--uce``: UCE erases the concepts in one call preserving what ``preserved-both`` keeps, and each
    HiRM row is also judged with the UCE patch applied on top (disjoint tensors, merged)."""
    import hirm.api
    import hirm.evaluation.canvas as canvas_module

    calls, real_erase = [], hirm.api.erase

    def spy(model, concepts, **kwargs):
        calls.append(([c.text for c in concepts], kwargs["method"], kwargs["config"].preserve))
        return real_erase(model, concepts, **kwargs)

    applied, real_patched = [], canvas_module.patched

    def spy_patched(pipe, patches):
        applied.append(sorted({key.split("/")[0] for p in patches for key in p.tensors}))
        return real_patched(pipe, patches)

    monkeypatch.setattr(hirm.api, "erase", spy)
    monkeypatch.setattr(canvas_module, "patched", spy_patched)
    saved = bench.main(["--out", str(tmp_path / "u"), "--model", str(sd_dir), "--budget", "tiny", "--domains",
                        "object", "--strategies", "preserved", "--keep-other-domain", "--uce", "--cache-dir",
                        str(tmp_path / "cache")])  # fmt: skip
    rows = saved["domains"]["object"]["rows"]
    assert list(rows) == ["original", "preserved-both", "uce-both", "preserved-both+uce"]
    assert calls == [(["Cats", "Dogs"], "uce", ("Trees", "Birds", "Van Gogh", "Crayon", "Pastel", "Rust"))]
    assert applied == [["text_encoder"], ["unet"], ["text_encoder", "unet"]]
    assert rows["preserved-both+uce"]["erase_s"] >= rows["uce-both"]["erase_s"]
    assert rows["preserved-both+uce"]["UA"]["n"] == 8


def test_uce_tokens_last_names_its_rows_and_runs_the_rewritten_script(
    bench, world, sd_dir, tmp_path, monkeypatch
):
    import hirm.api

    modes, real_erase = [], hirm.api.erase

    def spy(model, concepts, **kwargs):
        modes.append(kwargs["config"].tokens)
        return real_erase(model, concepts, **kwargs)

    monkeypatch.setattr(hirm.api, "erase", spy)
    saved = bench.main(["--out", str(tmp_path / "u"), "--model", str(sd_dir), "--budget", "tiny", "--domains",
                        "style", "--strategies", "joint", "--uce", "--uce-tokens", "last", "--cache-dir",
                        str(tmp_path / "cache")])  # fmt: skip
    assert list(saved["domains"]["style"]["rows"]) == ["original", "joint", "uce-last", "joint+uce-last"]
    assert modes == ["last"] and saved["uce_tokens"] == "last"


def test_benchmark_keeps_two_concepts_for_ira(bench, world):
    names, note = bench.erased_concepts(world, "object", 10)
    assert names == ["Cats", "Dogs"] and "10 requested, 2 erased" in note


def test_preserved_keeps_the_given_concepts_in_the_templates(model):
    """``preserved``: one joint run whose preserve set is the kept concepts in every template; refuses a
    concept that is both erased and kept, a bare string, and ``keep`` with another strategy."""
    config = HiRMConfig(steps=2, lr=1e-2, templates=("{concept}", "a photo of {concept}"), precision="fp32")
    patch = erase_many(
        model, CONCEPTS, config, strategy="preserved", keep=["Horses", "Birds"], progress=False
    )
    saved = patch.metadata["config"]
    assert saved["preserve"] == ["Horses", "a photo of Horses", "Birds", "a photo of Birds"]
    assert saved["preserve_weight"] == 1.0 and patch.metadata["multi"] == {"strategy": "preserved", "runs": 1}
    direct = hirm.erase(
        model,
        CONCEPTS,
        config=replace(config, preserve=tuple(saved["preserve"]), preserve_weight=1.0),
        progress=False,
    )
    assert all(torch.equal(patch.tensors[k], direct.tensors[k]) for k in direct.tensors)
    with pytest.raises(ValueError, match="both erased and kept"):
        erase_many(model, CONCEPTS, CONFIG, strategy="preserved", keep=["cats"], progress=False)
    with pytest.raises(ValueError, match="give them"):
        erase_many(model, CONCEPTS, CONFIG, strategy="preserved", progress=False)
    with pytest.raises(TypeError, match="list of concept texts"):
        erase_many(model, CONCEPTS, CONFIG, strategy="preserved", keep="Horses", progress=False)
    with pytest.raises(ValueError, match="'preserved' only"):
        erase_many(model, CONCEPTS, CONFIG, strategy="joint", keep=["Horses"], progress=False)


def test_cli_with_preserve_prompts_is_the_preserved_strategy_toward_the_empty_prompt(model, sd_dir, tmp_path):
    """The README's command line for ``preserved-both --target empty`` (``hirm erase -c .. -t empty
    --preserve .. --preserve-weight 1``) writes the patch ``erase_many(strategy="preserved")`` makes."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from hirm.cli.main import app

    config = HiRMConfig(steps=2, lr=1e-2, precision="fp32")
    erased = [Concept("Cats", target=PromptTarget("")), Concept("Dogs", target=PromptTarget(""))]
    patch = erase_many(model, erased, config, strategy="preserved", keep=["Horses", "Birds"], progress=False)
    out = tmp_path / "cli.safetensors"
    args = ["erase", "--model", str(sd_dir), "-c", "Cats", "-c", "Dogs", "-t", "empty", "--preserve", "Horses",
            "--preserve", "Birds", "--preserve-weight", "1", "--steps", "2", "--lr", "1e-2", "--precision",
            "fp32", "--quiet", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cli = load_file(out)
    assert set(cli) == set(patch.tensors) and all(torch.equal(cli[k], patch.tensors[k]) for k in cli)


@pytest.fixture(scope="module")
def drift():
    return _benchmark("multi_concept_drift")


def test_drift_reads_the_prompt_rows_and_sees_an_edit(drift, model):
    """The drift diagnostic: rows from the first word through the end token; cosine 1 for an unchanged
    encoder, below 1 for the concepts an edit moved."""
    from hirm.core.encoder import tokenize

    tokenizer, encoder = model.tokenizer(), model.text_encoder()
    ids = tokenize(tokenizer, ["a cat", "a cat in the snow"])
    mask = drift.prompt_rows(ids, tokenizer.eos_token_id)
    assert mask.sum(1).tolist() == [3, 6] and not mask[:, 0].any()  # words + end token; no start token
    same = drift.concept_cosines(encoder, encoder, ids, mask, ["a", "b"])
    assert same == pytest.approx({"a": 1.0, "b": 1.0}, abs=1e-5)
    patch = erase_many(model, CONCEPTS[:1], HiRMConfig(steps=3, lr=5e-2, precision="fp32"), progress=False)
    edited = hirm.apply_patch(hirm.load_model(model.path).text_encoder(), patch, component="text_encoder")
    moved = drift.concept_cosines(encoder, edited, ids, mask, ["a", "b"])
    assert all(v < 0.9999 for v in moved.values())


def test_drift_rows_keep_sentences_and_one_concept_at_a_time_on_the_world(drift, tmp_path, kept_by_call):
    """``--erase C --each --rows preserved:..,preserved-sentences:..``: a row per (concept, strategy) with
    the bare kept names as a group of their own; the sentence row keeps the attack entries' sentences
    (its patch records them); bad flags are one-line errors that write nothing."""
    from hirm.evaluation.compare import pair_sentences

    out = tmp_path / "drift"
    result = drift.main(["--out", str(out), "--domains", "object", "--erase", "Cats", "--each", "--target",
                             "empty", "--steps", "1", "--rows", "preserved:5e-4,preserved-sentences:5e-4"])  # fmt: skip
    rows = result["domains"]["object"]["rows"]
    assert [(r["erased_concepts"], r["strategy"]) for r in rows] == [
        (["Cats"], "preserved"),
        (["Cats"], "preserved-sentences"),
    ]
    for row in rows:
        assert (row["erased"]["n"], row["kept"]["n"], row["kept, bare"]["n"]) == (1, 19, 19)
        assert 0 < row["kept, bare"]["mean"] <= 1.0001
    from hirm.world.concepts import STYLES

    siblings = kept_by_call[0]
    assert len(siblings) == 19 and "Cats" not in siblings
    styles = [n.replace("_", " ") for n in STYLES]
    assert kept_by_call[1] == siblings + list(pair_sentences(siblings, "object", styles))
    assert "| object | Cats | preserved-sentences |" in (out / "drift.md").read_text()
    for bad, message in ((["--rows", "nope:1"], "unknown strategy"), (["--each"], "give --erase"),
                         (["--erase", "Unicorns", "--domains", "object"], "not objects of the world")):  # fmt: skip
        with pytest.raises(SystemExit, match=message):
            drift.main(["--out", str(tmp_path / "bad"), "--steps", "1", *bad])
    assert not (tmp_path / "bad").exists()


def test_context_templates_share_no_word_with_the_world_and_are_none_of_its_templates():
    """In-context erasure must not train on the evaluation's words or frames: no word of a context
    template is a world concept name, synonym or super-category, and no template is a world caption
    template with the concept slot in place of a concept."""
    import re

    import hirm.world.concepts as world
    from hirm.core.multi import CONTEXT_TEMPLATES

    function_words = {"a", "an", "the", "on", "of", "in", "and", "to", "with", "at"}  # "On Fire", "Ink Art"

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z]+", text.lower().replace("_", " "))) - function_words

    vocabulary = set()
    for name in (*world.STYLES, *world.OBJECTS):
        vocabulary |= words(name)
    for table in (world.STYLE_SYNONYMS, world.OBJECT_SYNONYMS):
        for synonyms in table.values():
            vocabulary |= set().union(*(words(s) for s in synonyms))
    for table in (world.STYLE_SUPER, world.OBJECT_SUPER):
        vocabulary |= set().union(*(words(s) for s in table.values()))
    for template in CONTEXT_TEMPLATES:
        assert template.count("{concept}") == 1
        assert not words(template.replace("{concept}", "")) & vocabulary, template
    frames = set()
    for template in (*world.TRAIN_TEMPLATES, *world.HELDOUT_TEMPLATES):
        for slot in ("object", "style"):
            frames.add(template.replace("{" + slot + "}", "{concept}").lower())
    assert not {t.lower() for t in CONTEXT_TEMPLATES if t != "{concept}"} & frames


def test_parallel_script_runs_seed_groups_and_pools_them(tmp_path):
    """``scripts/multi_concept_parallel.sh``: one process per seed group on the embedded world (smoke
    budget), pooled into one table; a second call runs no finished group again."""
    import os
    import subprocess

    script = Path(__file__).parents[1] / "scripts" / "multi_concept_parallel.sh"
    out = tmp_path / "mc"
    args = ["bash", str(script), str(out), "188 288", "--budget", "tiny", "--strategies", "none",
            "--domains", "object"]  # fmt: skip
    env = {**os.environ, "DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    pooled = json.loads((out / "multi_concept.json").read_text())
    assert pooled["meta"]["seeds"] == [188, 288] and len(pooled["meta"]["merged"]) == 2
    parts = [json.loads((out / f"seeds_{s}" / "multi_concept.json").read_text()) for s in (188, 288)]
    rows = [p["domains"]["object"]["rows"]["original"]["UA"]["n"] for p in parts]
    assert pooled["domains"]["object"]["rows"]["original"]["UA"]["n"] == sum(rows) > 0
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done before") == 2, again.stdout + again.stderr
