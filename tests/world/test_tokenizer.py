"""The CLIP-format BPE tokenizer (freshly trained and shipped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hirm.world import HELDOUT_TEMPLATES, OBJECTS, STYLES, make_prompt
from hirm.world.captions import all_captions
from hirm.world.tokenizer import BOS, EOS, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def fresh_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(path)
    return path, load_tokenizer(path)


def _round_trip(tok, text: str) -> None:
    ids = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id
    n = ids.index(tok.eos_token_id) + 1
    assert all(i == tok.pad_token_id for i in ids[n:])
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert "".join(decoded.split()) == "".join(text.lower().split())
    assert tok(decoded).input_ids == ids[:n]


def test_files_in_clip_format(fresh_tokenizer) -> None:
    path, tok = fresh_tokenizer
    assert (path / "vocab.json").exists() and (path / "merges.txt").exists()
    assert (path / "merges.txt").read_text().startswith("#version: 0.2\n")
    vocab = json.loads((path / "vocab.json").read_text())
    assert BOS in vocab and EOS in vocab and "cats</w>" in vocab
    assert tok.model_max_length == 77 and tok.pad_token == EOS == tok.eos_token and tok.bos_token == BOS


def test_round_trip_training_and_heldout_captions(fresh_tokenizer) -> None:
    _, tok = fresh_tokenizer
    caps = all_captions()[::97]
    caps += [
        make_prompt(t, style=s, object=o) for t in HELDOUT_TEMPLATES for s, o in zip(STYLES, OBJECTS * 2)
    ]
    for text in caps:
        _round_trip(tok, text)


def test_training_words_are_single_tokens(fresh_tokenizer) -> None:
    _, tok = fresh_tokenizer
    for word in ("cats", "neon", "watercolor", "animal", "painting"):
        assert len(tok(word).input_ids) == 3, word


def test_shipped_tokenizer_matches_a_fresh_one(fresh_tokenizer) -> None:
    from hirm.world import pipeline_dir

    path, _ = fresh_tokenizer
    shipped = Path(pipeline_dir()) / "tokenizer"
    assert (shipped / "vocab.json").read_text() == (path / "vocab.json").read_text()
    assert (shipped / "merges.txt").read_text() == (path / "merges.txt").read_text()


def _naive_bpe(texts: list[str], n_tokens: int, min_count: int) -> list[tuple[str, str]]:
    """Textbook BPE, recounting every pair at every step; ties to the smallest pair."""
    from collections import Counter

    from hirm.world.tokenizer import _word_pieces, _word_symbols, bytes_to_unicode

    b2u = bytes_to_unicode()
    counts = Counter(_word_pieces(" ".join(texts)))
    words = {w: list(_word_symbols(w, b2u)) for w in counts}
    merges, results = [], set()
    while len(results) < n_tokens:
        pairs = Counter()
        for w, sym in words.items():
            for pair in zip(sym, sym[1:]):
                pairs[pair] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_count:
            break
        merges.append(best)
        results.add("".join(best))
        for w, sym in words.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            words[w] = out
    return merges


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.text(alphabet="abcde .", min_size=1, max_size=12), min_size=1, max_size=12),
    st.integers(1, 25),
    st.integers(1, 3),
)
def test_merges_match_textbook_bpe_and_ignore_text_order(texts, n_tokens, min_count) -> None:
    from hirm.world.tokenizer import learn_merges

    merges = learn_merges(texts, vocab_size=512 + 2 + n_tokens, min_count=min_count)
    assert merges == _naive_bpe(texts, n_tokens, min_count)
    assert learn_merges(texts[::-1], vocab_size=512 + 2 + n_tokens, min_count=min_count) == merges


def test_learning_is_deterministic_on_the_world_texts() -> None:
    """The same texts give the same merges run after run (the library trainer did not: ties by hash order)."""
    from hirm.world.captions import corpus_texts
    from hirm.world.tokenizer import learn_merges

    texts = all_captions()[::7] + corpus_texts()[::7]
    first = learn_merges(texts, vocab_size=2048)
    assert learn_merges(list(reversed(texts)), vocab_size=2048) == first
