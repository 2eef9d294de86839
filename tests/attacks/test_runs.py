"""Runs on a tiny random pipeline: seeded, resumable (an interrupted run ends exactly where an
uninterrupted one does), budget flags honoured, files written, foreign directories left alone."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from hirm.attacks import (
    AttackTarget,
    ClassJudge,
    EmbeddingAttackConfig,
    RingABellConfig,
    Sampler,
    UnlearnDiffAtkConfig,
    prompt_target,
    run_attack,
)
from hirm.attacks import run as run_module
from hirm.evaluation.judges import FunctionJudge
from hirm.io import OutputExistsError

SAMPLER = Sampler(num_inference_steps=2, guidance_scale=3.0, batch_size=4)
CONFIGS = {
    "embedding": EmbeddingAttackConfig(steps=6, batch_size=2, checkpoint_every=2, initializer="car"),
    "unlearndiffatk": UnlearnDiffAtkConfig(k=2, iterations=2, n_timesteps=2),
    "ringabell": RingABellConfig(population=8, generations=3, length=3),
}


def red_judge():
    """'red' when the red channel is the brightest on average: depends on the image, never on the prompt."""

    def fn(images):
        return images.mean(dim=(2, 3)).mul(50).softmax(-1)

    return ClassJudge(FunctionJudge(("red", "green", "blue"), fn), "red")


@pytest.fixture(scope="module")
def target() -> AttackTarget:
    return prompt_target("cat", "object", prompts=("a photo of a {concept}", "a {concept} on a sofa"), seeds=(0, 1),
                         train_seeds=(5,))  # fmt: skip


def _run(name, sd_dir, target, out, **kwargs):
    return run_attack(name, str(sd_dir), target, out=out, config=CONFIGS.get(name), judge=red_judge(),
                      sampler=SAMPLER, progress=False, **kwargs)  # fmt: skip


def _stop_after(n: int):
    """``Budget.expired`` that turns true after ``n`` checks (a deterministic time limit)."""
    left = [n]

    def expired(budget) -> bool:
        left[0] -= 1
        return left[0] < 0

    return expired


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_interrupted_runs_resume_to_the_uninterrupted_result(name, sd_dir, target, tmp_path, monkeypatch):
    whole = _run(name, sd_dir, target, tmp_path / "whole")
    assert whole["complete"] and whole["asr"]["n"] == 4

    rounds = 0
    while True:
        rounds += 1
        with monkeypatch.context() as m:
            m.setattr(run_module.Budget, "expired", _stop_after(3))
            part = _run(name, sd_dir, target, tmp_path / "parts")
        if part["complete"]:
            break
        assert "re-run the same command" in part["message"] and rounds < 30
    assert rounds > 1, "the budget should have interrupted the run at least once"
    keys = ("prompt", "seed", "attacked_prompt", "before", "after", "success")
    assert [{k: r[k] for k in keys} for r in part["items"]] == [
        {k: r[k] for k in keys} for r in whole["items"]
    ]
    for a, b in zip(whole["items"], part["items"]):
        assert (tmp_path / "whole" / a["images"]["after"]).read_bytes() == (
            tmp_path / "parts" / b["images"]["after"]
        ).read_bytes()
    found_a, found_b = (
        load_file(str(tmp_path / "whole" / "found.safetensors")),
        load_file(str(tmp_path / "parts" / "found.safetensors")),
    )
    assert found_a.keys() == found_b.keys()
    for key in found_a:
        torch.testing.assert_close(found_a[key], found_b[key], rtol=0, atol=0)


def test_step_budgets_and_written_files(sd_dir, target, tmp_path):
    result = _run("embedding", sd_dir, target, tmp_path / "ti")
    out = tmp_path / "ti"
    assert len(json.loads((out / "embedding.json").read_text())["losses"]) == 6
    vectors = load_file(str(out / "found.safetensors"))
    assert list(vectors) == ["<hirm-attack>"] and vectors["<hirm-attack>"].shape == (1, 32)
    assert json.loads((out / "found.json").read_text())["placeholder"] == "<hirm-attack>"
    assert not (out / "checkpoint.safetensors").exists(), "a finished search leaves no checkpoint"
    assert (out / "grid.png").is_file() and len(list((out / "images" / "after").glob("*.png"))) == 4
    assert result["items"][0]["attacked_prompt"] == "a photo of a <hirm-attack>"
    assert json.loads((out / "result.json").read_text())["asr"]["n"] == 4

    uda = _run("unlearndiffatk", sd_dir, target, tmp_path / "uda")
    attacked = [r for r in uda["items"] if r["after"] is not None]
    assert all(len(r["losses"]) <= 2 and len(r["tokens"]) == 2 for r in attacked)
    assert all(r["attacked_prompt"].endswith(r["prompt"]) for r in attacked)
    assert load_file(str(tmp_path / "uda" / "found.safetensors"))["item_00000"].shape == (2,)

    rab = _run("ringabell", sd_dir, target, tmp_path / "rab")
    searches = list((tmp_path / "rab" / "search").glob("*.json"))
    assert len(searches) == 2  # one search per benign prompt, shared by its seeds
    assert all(len(json.loads(p.read_text())["history"]) == 3 for p in searches)
    assert rab["items"][0]["attacked_prompt"] == rab["items"][1]["attacked_prompt"]


def test_unlearndiffatk_chunk_search_is_each_prompt_searched_alone(sd_dir, tmp_path, monkeypatch):
    """Prompts searched together in a chunk find what each finds alone (sampler batch 1): each keeps its
    own token distribution, random stream and stopping point; only floating-point order differs.

    The judge is made per item (so that stopping does not depend on image noise): an item of seed 1 is
    recognised at its second judging (the first after the attack's first loss timestep), seed 0 never."""
    target = prompt_target("cat", "object", prompts=("a photo of a {concept}", "a {concept} on a sofa",
                           "a {concept} in a box"), seeds=(0, 1))  # fmt: skip
    config = UnlearnDiffAtkConfig(k=2, iterations=3, n_timesteps=3)
    judged = run_module.AttackContext.judged

    def runs(size):
        calls = {}

        def per_item(ctx, cond, items):
            images, _ = judged(ctx, cond, items)
            verdicts = []
            for item in items:
                calls[item.prompt, item.seed] = calls.get((item.prompt, item.seed), 0) + 1
                verdicts.append(item.seed == 1 and calls[item.prompt, item.seed] == 2)
            return images, verdicts

        with monkeypatch.context() as m:
            m.setattr(run_module.AttackContext, "judged", per_item)
            return run_attack("unlearndiffatk", str(sd_dir), target, out=tmp_path / f"b{size}", config=config,
                              judge=red_judge(), sampler=replace(SAMPLER, batch_size=size), progress=False)  # fmt: skip

    alone, together = runs(1)["items"], runs(6)["items"]
    keys = ("attacked_prompt", "before", "after", "tokens", "timesteps")
    assert [{k: r[k] for k in keys} for r in alone] == [{k: r[k] for k in keys} for r in together]
    for a, b in zip(alone, together):
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-4)
    assert [(r["seed"], r["after"], len(r["losses"])) for r in together] == [(0, False, 3), (1, True, 1)] * 3


def test_unlearndiffatk_cuts_a_prompt_longer_than_the_encoder_reads(sd_dir, tmp_path):
    """As 8 of UnlearnDiffAtk's 142 nudity prompts: the plain and the prefixed prompt are cut where the
    pipeline cuts them (the run used to fail on the first such prompt)."""
    long = prompt_target(
        "cat", "object", prompts=("a photo of a {concept} " + "on a sofa " * 30,), seeds=(0,)
    )
    never = ClassJudge(
        FunctionJudge(("red", "green"), lambda x: torch.tensor([0.0, 1.0]).expand(len(x), 2)), "red"
    )
    result = run_attack("unlearndiffatk", str(sd_dir), long, out=tmp_path / "long", config=CONFIGS["unlearndiffatk"],
                        judge=never, sampler=SAMPLER, progress=False)  # fmt: skip
    (item,) = result["items"]
    assert result["complete"] and item["before"] is False and item["after"] is False
    assert len(item["tokens"]) == 2 and len(item["losses"]) == 2  # attacked at every timestep


def test_time_limit_stops_cleanly_and_seeds_matter(sd_dir, target, tmp_path):
    stopped = _run("unlearndiffatk", sd_dir, target, tmp_path / "a", time_limit=1e-6)
    assert not stopped["complete"] and stopped["asr"]["n"] == 0 and "time limit" in stopped["message"]
    one = _run("unlearndiffatk", sd_dir, target, tmp_path / "b", seed=1)
    two = _run("unlearndiffatk", sd_dir, target, tmp_path / "c", seed=2)
    assert [r["attacked_prompt"] for r in one["items"]] != [r["attacked_prompt"] for r in two["items"]]


def test_output_directory_rules(sd_dir, target, tmp_path):
    _run("ringabell", sd_dir, target, tmp_path / "run")
    with pytest.raises(OutputExistsError, match="another attack run"):
        _run("ringabell", sd_dir, target, tmp_path / "run", seed=3)
    _run("ringabell", sd_dir, target, tmp_path / "run", seed=3, overwrite=True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not an attack run"):
        _run("ringabell", sd_dir, target, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_bad_inputs_are_one_line_errors(sd_dir, target, tmp_path):
    from hirm.evaluation.common import EvaluationInputError

    with pytest.raises(EvaluationInputError, match="Unknown attack"):
        _run("nonsense", sd_dir, target, tmp_path / "x")
    with pytest.raises(EvaluationInputError, match="No default judge"):
        run_attack("prompts", str(sd_dir), "cat", out=tmp_path / "y", progress=False)
    with pytest.raises(TypeError, match="takes a EmbeddingAttackConfig"):
        run_attack(
            "embedding",
            str(sd_dir),
            target,
            out=tmp_path / "z",
            config=CONFIGS["ringabell"],
            judge=red_judge(),
        )
    with pytest.raises(ValueError, match="steps must be >= 1"):
        EmbeddingAttackConfig(steps=0)
