"""`hirm compare` machinery on a tiny pipeline with hand-made judges: every entry runs on the same
grid, the table has one row per (method, domain) with the measured cost and size, and a rerun resumes."""

from __future__ import annotations

import csv
from dataclasses import replace

from hirm.evaluation.compare import ENTRIES, Entry, run_compare


def test_compare_runs_every_entry_and_writes_the_table(sd_dir, canvas, judges, settings, tmp_path):
    entries = [ENTRIES["hirm-r"], ENTRIES["hirm-s"], ENTRIES["uce"], ENTRIES["hirm+uce"],
               Entry("esd-x", ("esd-x",), overrides={"esd-x": {"steps": 1, "ddim_steps": 2}})]  # fmt: skip
    out = tmp_path / "cmp"
    table = run_compare(sd_dir, out=out, entries=entries, settings=settings, canvas=canvas, judges=judges,
                        limit=None, progress=False, command="hirm compare --test")  # fmt: skip
    text = table.read_text()
    assert "| hirm-r | style |" in text and "| esd-x | object |" in text and "hirm compare --test" in text
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert {(r["method"], r["domain"]) for r in rows} == {
        (e.name, d) for e in entries for d in ("style", "object")
    }
    by = {(r["method"], r["domain"]): r for r in rows}
    assert int(by[("hirm+uce", "style")]["parameters"]) == int(by[("hirm-r", "style")]["parameters"]) + int(
        by[("uce", "style")]["parameters"]
    )
    assert all(float(r["seconds_mean"]) > 0 for r in rows)
    for r in rows:
        assert 0.0 <= float(r["UA_ci95_lo"]) <= float(r["UA_mean"]) <= float(r["UA_ci95_hi"]) <= 1.0
        assert int(r["IRA_images"]) > 0 and int(r["CRA_images"]) > 0  # the n behind each figure
    assert "95 % percentile-bootstrap interval over concepts" in text and "images judged per entry" in text
    # every row names the authors' code its entry follows: a note number in the table, the script in the notes
    assert "train_erase.py" in by[("uce", "object")]["follows"]
    assert (
        "train.py" in by[("hirm+uce", "style")]["follows"]
        and "train_erase.py" in by[("hirm+uce", "style")]["follows"]
    )
    assert "train-esd.py" in by[("esd-x", "style")]["follows"]
    uce_row = next(line for line in text.splitlines() if line.startswith("| uce | style |"))
    assert uce_row.rstrip(" |").endswith("[3]") and "- [3] uce: uce (follows rohitgandikota" in text

    stamp = (out / "hirm-r" / "results.jsonl").read_text()
    run_compare(
        sd_dir, out=out, entries=entries[:1], settings=settings, canvas=canvas, judges=judges, progress=False
    )
    assert (out / "hirm-r" / "results.jsonl").read_text() == stamp  # resumed: nothing redone


def test_random_rms_entry_scales_the_target_to_the_read_out(sd_dir, canvas):
    import pytest
    import torch

    import hirm
    from hirm.evaluation.compare import make_erase

    handle = hirm.load_model(sd_dir)
    patch = make_erase(ENTRIES["hirm-r-rms"], canvas, torch.device("cpu"))(
        handle, canvas.objects[0], "object"
    )
    (concept,) = patch.metadata["concepts"]
    assert concept["target"]["scale"] == "readout-rms" and patch.metadata["config"]["read"]["site"] == "final"
    with pytest.raises(ValueError, match="target must be one of"):
        Entry("x", ("hirm",), target="randm")


def test_empty_keep_entry_misdirects_toward_the_empty_prompt_keeping_the_siblings(sd_dir, canvas):
    """``hirm-empty-keep``: world-tuned HiRM toward ``PromptTarget("")`` whose preserve set is the erased
    concept's domain siblings (weight 1)."""
    import torch

    import hirm
    from hirm.evaluation.common import display_name
    from hirm.evaluation.compare import make_erase

    erased = canvas.objects[0]
    patch = make_erase(ENTRIES["hirm-empty-keep"], canvas, torch.device("cpu"))(
        hirm.load_model(sd_dir), erased, "object"
    )
    (concept,) = patch.metadata["concepts"]
    config = patch.metadata["config"]
    assert concept["target"] == {"kind": "prompt", "prompt": "", "coeff": 1.0}
    assert config["preserve"] == [display_name(x) for x in canvas.objects if x != erased]
    assert config["preserve_weight"] == 1.0 and config["read"]["site"] == "final" and config["steps"] == 100


def test_merged_parts_give_the_table_of_one_run(sd_dir, canvas, judges, settings, tmp_path):
    """Concept groups run apart (as parallel processes on one GPU would) and merged give the same
    per-concept figures and table rows as one run over every concept; bad merges are refused."""
    import json

    import pytest

    from hirm.evaluation.common import EvaluationInputError
    from hirm.evaluation.compare import merge_compare
    from hirm.evaluation.sweep import merge_sweeps

    entries = [ENTRIES["hirm-r"], ENTRIES["uce"]]
    kw = dict(entries=entries, settings=settings, canvas=canvas, judges=judges, progress=False)
    run_compare(sd_dir, out=tmp_path / "whole", **kw)
    groups = {"a": ["Van_Gogh", "Cats"], "b": ["Crayon", "Dogs"]}
    for name, concepts in groups.items():
        run_compare(sd_dir, out=tmp_path / name, concepts=concepts, **kw)
    table = merge_compare([tmp_path / "a", tmp_path / "b"], out=tmp_path / "merged", command="merge --test")

    def figures(out, entry):
        rows = list(csv.DictReader((out / entry / "results.csv").open()))
        return {r["concept"]: {k: v for k, v in r.items() if not k.endswith("_s")} for r in rows}

    for entry in ("hirm-r", "uce"):
        assert figures(tmp_path / "merged", entry) == figures(tmp_path / "whole", entry)
        manifest = json.loads((tmp_path / "merged" / entry / "sweep.json").read_text())
        assert manifest["complete"] and manifest["concepts"] == ["Van_Gogh", "Cats", "Crayon", "Dogs"]
        assert (tmp_path / "merged" / entry / "concepts" / "Dogs" / "result.json").is_file()

    def stats(out):
        rows = csv.DictReader((out / "compare.csv").open())
        return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rows]

    assert stats(tmp_path / "merged") == stats(tmp_path / "whole")
    text = table.read_text()
    assert "merge --test" in text and "- machine: " in text and "'seeds': [1, 2]" in text
    assert "(only these)" not in text  # both entries ran on every concept

    # refused: a non-empty target, a concept in two parts, parts of other settings; nothing written
    with pytest.raises(EvaluationInputError, match="not empty"):
        merge_compare([tmp_path / "a", tmp_path / "b"], out=tmp_path / "merged")
    with pytest.raises(EvaluationInputError, match="in both"):
        merge_sweeps([tmp_path / "a" / "uce", tmp_path / "whole" / "uce"], tmp_path / "dup")
    run_compare(sd_dir, out=tmp_path / "other", concepts=["Crayon"], entries=entries[:1],
                settings=replace(settings, seeds=(3,)), canvas=canvas, judges=judges, progress=False)  # fmt: skip
    with pytest.raises(EvaluationInputError, match="another settings key"):
        merge_sweeps([tmp_path / "a" / "hirm-r", tmp_path / "other" / "hirm-r"], tmp_path / "mixed")
    assert not (tmp_path / "dup").exists() and not (tmp_path / "mixed").exists()
    # a comparison whose second entry cannot be merged (uce's concepts twice) writes nothing at all
    import shutil

    shutil.copytree(tmp_path / "a" / "uce", tmp_path / "c" / "uce")
    with pytest.raises(EvaluationInputError, match="in both"):
        merge_compare([tmp_path / "a", tmp_path / "b", tmp_path / "c"], out=tmp_path / "half")
    assert not (tmp_path / "half").exists()

    # an entry run on fewer concepts than the first says which ones its rows are over
    shutil.copytree(tmp_path / "whole" / "uce", tmp_path / "d" / "uce")
    shutil.copytree(tmp_path / "a" / "hirm-r", tmp_path / "d" / "hirm-r")
    text = merge_compare([tmp_path / "d"], out=tmp_path / "subset", names=["uce", "hirm-r"]).read_text()
    assert "- style concepts: Van_Gogh, Crayon" in text
    assert "- hirm-r, style concepts: Van_Gogh (only these)" in text


def test_preserve_others_reaches_each_methods_preserve_set(sd_dir, canvas):
    """preserve_others gives the erased concept's domain siblings to UCE's preserve list, to HiRM's
    preserve set with a weight (it has none by default; 0 would be refused), to ESD's retain set (ours),
    and to hardened HiRM's nested HiRM config; a method without a preserve set is refused, not silently
    left alone."""
    import pytest
    import torch

    import hirm
    from hirm.core.config import HiRMConfig
    from hirm.core.diffquickfix import DiffQuickFixConfig
    from hirm.core.esd import ESDConfig
    from hirm.core.uce import UCEConfig
    from hirm.evaluation.compare import PRESERVE_WEIGHT, make_erase, preserving

    keep = ("Dogs", "Horses")
    assert preserving(UCEConfig(), keep).preserve == keep
    hirm_config = preserving(HiRMConfig(), keep)
    assert (hirm_config.preserve, hirm_config.preserve_weight) == (keep, PRESERVE_WEIGHT)
    assert preserving(HiRMConfig(preserve=("x",), preserve_weight=0.3), keep).preserve_weight == 0.3
    esd_config = preserving(ESDConfig(), keep)  # ours: ESD-u / -x with a retain term
    assert (esd_config.preserve, esd_config.preserve_weight) == (keep, PRESERVE_WEIGHT)
    with pytest.raises(ValueError, match="has no preserve set"):
        preserving(DiffQuickFixConfig(), keep)
    # an entry's preserve_weight override waits for the preserve set (ESD refuses a weight without one)
    from hirm.evaluation.compare import _configs, _preserved

    weighted = Entry("esd-u-keep-w4", ("esd-u",), overrides={"esd-u": {"preserve_weight": 4.0}},
                     preserve_others=("esd-u",))  # fmt: skip
    made = _preserved(weighted, "esd-u", _configs(weighted)["esd-u"], keep)
    assert (made.preserve, made.preserve_weight) == (keep, 4.0)
    # so does preserve_nearest (ESD refuses more nearest prompts than its preserve set holds)
    near = Entry("esd-u-keep-n2", ("esd-u",), overrides={"esd-u": {"preserve_nearest": 2}},
                 preserve_others=("esd-u",))  # fmt: skip
    made = _preserved(near, "esd-u", _configs(near)["esd-u"], keep)
    assert (made.preserve, made.preserve_weight, made.preserve_nearest) == (keep, PRESERVE_WEIGHT, 2)
    assert preserving(HiRMConfig(), keep, 2.5).preserve_weight == 2.5
    with pytest.raises(ValueError, match="has no preserve weight"):
        preserving(UCEConfig(), keep, 2.0)

    entry = Entry(
        "hirm-adv-keep", ("hirm-adv",), target="super",
        overrides={"hirm-adv": {"rounds": 1, "hirm": {"steps": 2}}}, preserve_others=("hirm-adv",),
    )  # fmt: skip
    name = canvas.objects[0]
    patch = make_erase(entry, canvas, torch.device("cpu"))(hirm.load_model(sd_dir), name, "object")
    nested = patch.metadata["config"]["hirm"]
    siblings = [n.replace("_", " ") for n in canvas.objects if n != name]
    assert list(nested["preserve"]) == siblings and nested["preserve_weight"] == PRESERVE_WEIGHT


def test_preserve_sentences_pair_each_sibling_with_the_other_domain_never_in_the_grid_template(
    sd_dir, canvas
):
    """``pair_sentences``: each name with ``per_name`` partners of the other domain, partners and
    templates in turn, none in the grid's template or a super-category one; an Entry's
    ``preserve_sentences`` puts them in HiRM's preserve set after the bare siblings, and is refused for a
    method that preserves nothing."""
    import pytest
    import torch

    import hirm
    from hirm.evaluation.compare import make_erase, pair_sentences
    from hirm.world.concepts import CANVAS_TEMPLATE

    sentences = pair_sentences(["Cats", "Dogs"], "object", ["Pastel", "Rust", "Van Gogh"])
    assert sentences == (
        "A Pastel style image of Cats.",
        "Cats in Rust style",
        "a picture of Dogs, Van Gogh style",
        "Pastel Dogs",
    )
    grid = {
        CANVAS_TEMPLATE.format(object=o, style=s)
        for o in ("Cats", "Dogs")
        for s in ("Pastel", "Rust", "Van Gogh")
    }
    assert not grid & set(sentences) and not any("(" in s for s in sentences)
    assert pair_sentences(["Pastel"], "style", ["Cats"], per_name=1) == ("A Pastel style image of Cats.",)
    with pytest.raises(ValueError, match="domain must be"):
        pair_sentences(["Cats"], "colour", ["Pastel"])
    with pytest.raises(ValueError, match="add them to preserve_others"):
        Entry("x", ("hirm",), preserve_sentences=("hirm",))

    entry = Entry(
        "hirm-keep-sent", ("hirm",), target="empty", overrides={"hirm": {"steps": 1}},
        preserve_others=("hirm",), preserve_sentences=("hirm",),
    )  # fmt: skip
    name = canvas.objects[0]
    patch = make_erase(entry, canvas, torch.device("cpu"))(hirm.load_model(sd_dir), name, "object")
    siblings = tuple(n.replace("_", " ") for n in canvas.objects if n != name)
    styles = [n.replace("_", " ") for n in canvas.styles]
    expected = siblings + pair_sentences(siblings, "object", styles)
    assert tuple(patch.metadata["config"]["preserve"]) == expected and len(expected) == 3 * len(siblings)


def test_esd_batch_erases_the_pending_concepts_in_one_run_each_as_its_own_esd(
    sd_dir, canvas, judges, settings, tmp_path, esd_runs
):
    """``esd_batch``: the sweep's pending concepts go through one batched ESD run (each concept's patch
    its own sequential run's, up to floating point), their patches are cached so a resumed sweep does not
    train them again, and each record's erase seconds is its share of the batch."""
    import json

    import torch

    import hirm
    from hirm.evaluation.compare import BatchedESD, make_erase

    entry = Entry("esd-x", ("esd-x",), overrides={"esd-x": {"steps": 2, "ddim_steps": 3, "lr": 1e-3}})
    calls = esd_runs
    out, cache = tmp_path / "cmp", tmp_path / "cache"
    run_compare(sd_dir, out=out, entries=[entry], settings=settings, canvas=canvas, judges=judges, domain="object",
                cache_dir=cache, progress=False, esd_batch=5)  # fmt: skip
    assert calls == [["Cats", "Dogs"]]  # one run for both pending concepts
    records = [json.loads(line) for line in (out / "esd-x" / "results.jsonl").read_text().splitlines()]
    seconds = [r["times"]["erase"] for r in records]
    assert len(seconds) == 2 and seconds[0] == seconds[1] > 0  # each its share, not 'all, then nothing'
    assert not list((cache / "esd-batched").glob("run-*"))  # the finished batch's checkpoint is gone

    handle = hirm.load_model(sd_dir)
    batched = BatchedESD(entry, canvas, torch.device("cpu"), batch=5, cache_dir=cache, progress=False)
    batched.prepare([("Cats", "object"), ("Dogs", "object")])
    cached = batched(handle, "Dogs", "object")
    assert calls == [["Cats", "Dogs"]]  # read from the cache, not trained again
    alone = make_erase(entry, canvas, torch.device("cpu"))(handle, "Dogs", "object")
    assert cached.metadata["concepts"] == alone.metadata["concepts"]
    originals = {
        f"unet/{n}": p.detach()
        for n, p in hirm.core.patch.component_parameters(handle.component("unet")).items()
    }
    for key, value in alone.tensors.items():
        mine = value - originals[key]
        assert (cached.tensors[key] - originals[key] - mine).norm() <= 2e-2 * mine.norm() + 1e-12, key
    # without a batch size the entry runs one concept at a time, as before
    assert make_erase(entry, canvas, torch.device("cpu"), esd_batch=None).__class__ is not BatchedESD
    # nor does an ESD that is not the authors' (batched ESD refuses an adversary): routed, not failed
    adversary = Entry("esd-x-adv", ("esd-x",), overrides={"esd-x": {"adversary": "embedding"}})
    assert make_erase(adversary, canvas, torch.device("cpu"), esd_batch=5).__class__ is not BatchedESD


def test_an_entry_that_merges_esd_reuses_the_esd_entrys_cached_patch(sd_dir, canvas, tmp_path, esd_runs):
    """With ``esd_batch``, the ESD part of a merged entry (ours + ESD-x) is the patch the plain ESD entry
    cached for the same concept, not a new run; its erase seconds add that patch's share to the rest."""
    import torch

    import hirm
    from hirm.evaluation.compare import make_erase

    cpu, cache = torch.device("cpu"), tmp_path / "cache"
    esd = {"esd-x": {"steps": 2, "ddim_steps": 3, "lr": 1e-3}}
    plain = Entry("esd-x", ("esd-x",), overrides=esd)
    both = Entry(
        "hirm+esd-x", ("hirm", "esd-x"), target="empty", overrides={**esd, "hirm": {"steps": 2}},
        preserve_others=("hirm",),
    )  # fmt: skip
    handle = hirm.load_model(sd_dir)
    alone = make_erase(plain, canvas, cpu, esd_batch=4, cache_dir=cache, progress=False)(
        handle, "Cats", "object"
    )
    assert esd_runs == [["Cats"]]

    calls = esd_runs
    calls.clear()  # the merged entry's runs from here on
    erase = make_erase(both, canvas, cpu, esd_batch=4, cache_dir=cache, progress=False)
    erase.prepare([("Cats", "object"), ("Dogs", "object")])
    merged = erase(handle, "Cats", "object")
    assert calls == []  # read from the cache
    assert set(merged.tensors) > set(alone.tensors)  # ESD-x's U-Net tensors and HiRM's encoder tensors
    for key, value in alone.tensors.items():
        assert torch.equal(merged.tensors[key], value), key
    assert merged.metadata["method"] == "hirm+esd-x"
    assert merged.metadata["batched"] == {"esd-x": alone.metadata["batched"]}
    assert merged.metadata["parts"][1] == alone.metadata  # the ESD entry's own patch, metadata included
    assert merged.metadata["seconds"] > alone.metadata["seconds"]  # plus HiRM's own erase time
    # Dogs is not cached: the merged entry's ESD part trains the pending concepts together
    erase(handle, "Dogs", "object")
    assert calls == [["Dogs"]]


def test_an_entry_whose_parts_share_a_component_merges_into_a_patch_that_applies(sd_dir, canvas):
    """KV-Proj (cross-attention keys and values) + ESD-u (the U-Net's other weights) both change the U-Net:
    the merged patch fingerprints the union from the model and applies as the two parts together."""
    import torch

    import hirm
    from hirm.evaluation.compare import make_erase

    entry = Entry(
        "kv+esd-u", ("kv-proj", "esd-u"),
        overrides={"kv-proj": {"rank": 2}, "esd-u": {"steps": 2, "ddim_steps": 3, "lr": 1e-3}},
    )  # fmt: skip
    handle = hirm.load_model(sd_dir)
    merged = make_erase(entry, canvas, torch.device("cpu"), progress=False)(handle, "Cats", "object")
    assert merged.components == ("unet",) and len(merged.metadata["parts"]) == 2
    one = hirm.apply_patch(hirm.load_model(sd_dir).component("unet"), merged, component="unet")
    for key, value in merged.tensors.items():
        assert torch.equal(dict(one.named_parameters())[key.split("/", 1)[1]], value), key


def _erased_with_lookups(entry, canvas, sd_dir, name):
    """``make_erase``'s patch for the object ``name`` and the methods it looked up as parts made alone
    (a lookup that never finds one, so every part is trained)."""
    import torch

    import hirm
    from hirm.evaluation.compare import make_erase

    looked_up = []

    def reuse(method, config, concept, handle):
        looked_up.append(method)
        return None

    merged = make_erase(entry, canvas, torch.device("cpu"), reuse=reuse)(
        hirm.load_model(sd_dir), name, "object"
    )
    return merged, looked_up


def test_trained_on_trains_esd_with_the_earlier_part_in_place_and_never_reuses_a_part_made_alone(
    sd_dir, canvas
):
    """``Entry.trained_on``: ESD-u is trained with the entry's KV-Proj patch for the same concept in place
    (its part records that patch's digest), the order is checked, and a part trained so is never taken
    for what the method makes alone (``made_alone``), nor looked up as one."""
    import pytest

    import hirm
    from hirm.core.config import Concept
    from hirm.core.patch import split_patch
    from hirm.evaluation.compare import made_alone

    with pytest.raises(ValueError, match="'kv-proj' first"):
        Entry("x", ("esd-u", "kv-proj"), trained_on={"esd-u": "kv-proj"})
    with pytest.raises(ValueError, match="needs both among its methods"):
        Entry("x", ("esd-u",), trained_on={"esd-u": "kv-proj"})
    with pytest.raises(ValueError, match="only .* train on another patch"):
        Entry("x", ("kv-proj", "uce"), trained_on={"uce": "kv-proj"})
    entry = Entry(
        "kv+esd-u-onkv", ("kv-proj", "esd-u"), overrides={"kv-proj": {"rank": 1}, "esd-u": {"steps": 1, "ddim_steps": 2}},
        contrast_others=("kv-proj",), trained_on={"esd-u": "kv-proj"},
    )  # fmt: skip
    name = canvas.objects[0]
    merged, looked_up = _erased_with_lookups(entry, canvas, sd_dir, name)
    kv, esd = split_patch(merged)
    assert esd.metadata["trained_on"] == {"method": "kv-proj", "digest": kv.digest}
    assert looked_up == ["kv-proj"]  # the ESD-u part is never looked up as a part made alone
    config = replace(hirm.get_method("esd-u").config_cls(), steps=1, ddim_steps=2)
    concept = Concept(text=name.replace("_", " "), kind="object")
    assert not made_alone(esd.metadata, "esd-u", config, concept)
    assert made_alone({k: v for k, v in esd.metadata.items() if k != "trained_on"}, "esd-u", config, concept)


def test_retain_through_gives_esd_the_earlier_parts_merged_and_never_reuses_a_part_made_alone(sd_dir, canvas):
    """``Entry.retain_through``: ESD-u's retain term goes through the patches the parts listed before it
    made for the same concept, merged (its part records that merge's digest); only an ESD method of
    ``preserve_others`` listed after another part may ask; a part trained so is never taken for what the
    method makes alone, nor looked up as one."""
    import pytest

    import hirm
    from hirm.core.config import Concept
    from hirm.core.patch import merge_patches, split_patch
    from hirm.evaluation.compare import made_alone

    with pytest.raises(ValueError, match="retain_through names 'esd-u'"):  # no preserve set
        Entry("x", ("kv-proj", "esd-u"), retain_through=("esd-u",))
    with pytest.raises(ValueError, match="retain_through names 'esd-u'"):  # nothing before it
        Entry("x", ("esd-u", "kv-proj"), preserve_others=("esd-u",), retain_through=("esd-u",))
    with pytest.raises(ValueError, match="retain_through names 'uce'"):  # not ESD
        Entry("x", ("kv-proj", "uce"), preserve_others=("uce",), retain_through=("uce",))
    with pytest.raises(ValueError, match="add it to retain_through"):  # its adversary needs the parts
        Entry("x", ("kv-proj", "esd-u"), preserve_others=("esd-u",),
              overrides={"esd-u": {"adversary": "embedding", "adversary_through": True}})  # fmt: skip
    entry = Entry(
        "hirm+kv+esd-u-thru", ("hirm", "kv-proj", "esd-u"), target="empty",
        overrides={"hirm": {"steps": 1}, "kv-proj": {"rank": 1}, "esd-u": {"steps": 1, "ddim_steps": 2}},
        preserve_others=("hirm", "esd-u"), contrast_others=("kv-proj",), retain_through=("esd-u",),
    )  # fmt: skip
    name = canvas.objects[0]
    merged, looked_up = _erased_with_lookups(entry, canvas, sd_dir, name)
    te, kv, esd = split_patch(merged)
    assert esd.metadata["retain_through"] == {
        "method": "hirm+kv-proj",
        "digest": merge_patches([te, kv]).digest,
    }
    assert looked_up == ["hirm", "kv-proj"]  # the ESD-u part is never looked up as a part made alone
    config = replace(
        hirm.get_method("esd-u").config_cls(),
        steps=1,
        ddim_steps=2,
        preserve=tuple(esd.metadata["config"]["preserve"]),
    )
    concept = Concept(text=name.replace("_", " "), kind="object")
    assert not made_alone(esd.metadata, "esd-u", config, concept)
    assert made_alone(
        {k: v for k, v in esd.metadata.items() if k != "retain_through"}, "esd-u", config, concept
    )
