"""Causal tracing (hirm trace) and the padding / token-swap conditioning probes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel
from typer.testing import CliRunner

from hirm.cli.main import app
from hirm.evaluation.fidelity import swap_rows, trace_concept, with_clean_pads, with_clean_prompt


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tiny import clip_tokenizer

    return clip_tokenizer(tmp_path_factory.mktemp("tok"))


def _encoder(vocab: int, *, attention: bool) -> CLIPTextModel:
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    )
    model = CLIPTextModel(cfg).eval()
    if not attention:  # every position computed from its own token only
        for layer in model.encoder.layers:
            layer.self_attn.out_proj.weight.data.zero_()
            layer.self_attn.out_proj.bias.data.zero_()
    return model


def test_trace_without_attention_localises_at_the_concept_token_in_every_block(tok) -> None:
    model = _encoder(len(tok), attention=False)
    res = trace_concept(model, tok, ["a photo of cat sitting", "cat on a mat"], "cat", samples=2)
    assert res.scores.shape == (3, len(res.positions))
    col = res.positions.index("concept")
    np.testing.assert_allclose(res.scores[:, col], 1.0, atol=1e-5)  # restoring the concept row undoes it all
    others = np.delete(res.scores, col, axis=1)
    np.testing.assert_allclose(others, 0.0, atol=1e-5)  # no other row was ever corrupted


def test_trace_with_attention_spreads_and_leaves_the_start_token_alone(tok) -> None:
    model = _encoder(len(tok), attention=True)
    res = trace_concept(model, tok, ["a photo of cat sitting"], "cat", samples=3)
    np.testing.assert_allclose(res.scores[:, res.positions.index("bos")], 0.0, atol=1e-6)
    assert (res.scores <= 1 + 1e-6).all()
    # restoring the concept row right after the corruption helps more than restoring a later word's row
    assert res.scores[0, res.positions.index("concept")] > res.scores[0, res.positions.index("after+1")]


def test_trace_refuses_a_concept_missing_from_a_prompt(tok) -> None:
    with pytest.raises(ValueError, match="does not occur"):
        trace_concept(_encoder(len(tok), attention=True), tok, ["a photo of a dog"], "cat")


def test_concept_is_matched_as_a_word_and_its_last_occurrence_counts(tok) -> None:
    from hirm.evaluation.fidelity import _concept_span

    start, end = _concept_span(tok, "scattered cat", "cat")  # not the "cat" inside "scattered"
    assert end - start == 1 and start == len(tok("scattered").input_ids) - 1
    start, end = _concept_span(tok, "a cat of cat", "cat")  # "A painting of painting.": the last one
    assert start == len(tok("a cat of").input_ids) - 1
    with pytest.raises(ValueError, match="as a word"):
        _concept_span(tok, "a scattered dog", "cat")


def test_padding_and_swap_rows() -> None:
    rows = torch.arange(2 * 6 * 1, dtype=torch.float32).view(2, 6, 1)
    empty = torch.full((6, 1), -1.0)
    eot = torch.tensor([2, 3])
    pads = with_clean_pads(rows, eot, empty)
    assert pads[0, :3].flatten().tolist() == [0, 1, 2] and (pads[0, 3:] == -1).all()
    prompt = with_clean_prompt(rows, eot, empty)
    assert (prompt[1, :4] == -1).all() and prompt[1, 4:].flatten().tolist() == [10, 11]
    ids = torch.tensor([[5, 6, 7, 9, 9, 9], [5, 6, 7, 8, 9, 9]])
    other_ids = torch.tensor([[5, 4, 7, 9, 9, 9], [5, 6, 3, 8, 9, 9]])
    other = -rows
    word = swap_rows(rows, other, ids, other_ids, eot, part="word")
    assert word[0].flatten().tolist() == [0, -1, 2, 3, 4, 5] and word[1].flatten().tolist() == [
        6,
        7,
        -8,
        9,
        10,
        11,
    ]
    pad = swap_rows(rows, other, ids, other_ids, eot, part="padding")
    assert pad[1].flatten().tolist() == [6, 7, 8, 9, -10, -11]


def test_trace_command_writes_json_and_png(sd_dir, tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["trace", "--model", str(sd_dir), "-c", "cat", "--out", str(tmp_path / "t"), "--samples", "2"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "t" / "trace.json").read_text())
    assert len(data["scores"]) == data["layers"] and "concept" in data["positions"]
    assert (tmp_path / "t" / "trace.png").stat().st_size > 0
    bad = CliRunner().invoke(
        app, ["trace", "--model", str(sd_dir), "-c", "cat", "--out", str(tmp_path / "u"), "--samples", "0"]
    )
    assert bad.exit_code == 2 and "--samples" in bad.output
    again = CliRunner().invoke(
        app, ["trace", "--model", str(sd_dir), "-c", "cat", "--out", str(tmp_path / "t"), "--samples", "1"]
    )
    assert again.exit_code != 0 and "--overwrite" in again.output  # an earlier result is kept
    assert len(json.loads((tmp_path / "t" / "trace.json").read_text())["scores"]) == data["layers"]
    wrong = CliRunner().invoke(
        app, ["trace", "--model", str(sd_dir), "-c", "cat", "--component", "unet", "-o", str(tmp_path / "w")]
    )
    assert wrong.exit_code != 0 and "not CLIP text encoders" in wrong.output
