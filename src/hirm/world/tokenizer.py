"""Stage 1: a CLIP-format BPE tokenizer learned on the training captions and the language corpus.

The files follow CLIP's format exactly (``vocab.json`` + ``merges.txt``): byte-level symbols, a ``</w>``
end-of-word suffix, lower-cased text, ``<|startoftext|>`` / ``<|endoftext|>`` specials, 77 positions,
pad token = eos as in SD 1.x. The vocabulary is laid out like CLIP's: 256 byte symbols, the same with
``</w>``, one token per learned merge, then the two specials.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter
from pathlib import Path

from .captions import all_captions, corpus_texts

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
_WORD_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+"  # CLIP's word pieces


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable unicode map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _word_symbols(word: str, b2u: dict[int, str]) -> tuple[str, ...]:
    chars = [b2u[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1] + [chars[-1] + "</w>"])


def _word_pieces(text: str) -> list[str]:
    """CLIP's pre-tokenisation of lower-cased ``text``: whitespace, then :data:`_WORD_PATTERN`'s pieces."""
    return [piece for word in text.lower().split() for piece in re.findall(_WORD_PATTERN, word)]


def learn_merges(texts: list[str], *, vocab_size: int = 8192, min_count: int = 2) -> list[tuple[str, str]]:
    """BPE merges learned on lower-cased ``texts`` in CLIP's conventions, deterministically.

    Words are split like CLIP (whitespace, then :data:`_WORD_PATTERN`'s pieces), mapped to byte symbols and
    given the ``</w>`` end-of-word suffix. Each step merges the most frequent adjacent pair (frequency at
    least ``min_count``); ties go to the lexicographically smallest pair, so the merges depend only on the
    multiset of words, never on the order of ``texts`` or on the run. ``vocab_size`` counts the 512 byte
    symbols, one token per new merge result and the two specials.

    Deliberately not ``tokenizers.trainers.BpeTrainer``: with ``end_of_word_suffix`` set, it numbers the
    suffixed symbols in hash-map order and breaks count ties by those numbers, so the same texts give a
    different merge list on every run (measured here: 3 runs, 3 lists; huggingface/tokenizers#1794).
    The world build must give the same tokenizer, hence the same weights, from the same inputs.
    """
    b2u = bytes_to_unicode()
    counts = Counter(_word_pieces("\n".join(texts)))
    words = [list(_word_symbols(w, b2u)) for w in sorted(counts)]
    freqs = [counts[w] for w in sorted(counts)]
    stats: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, (sym, f) in enumerate(zip(words, freqs, strict=True)):
        for pair in zip(sym, sym[1:]):
            stats[pair] += f
            where.setdefault(pair, set()).add(i)
    heap = [(-c, pair) for pair, c in stats.items()]
    heapq.heapify(heap)

    base = set(b2u.values())
    known = base | {b + "</w>" for b in base}
    budget = vocab_size - 2 - len(known)
    out: list[tuple[str, str]] = []
    n_new = 0
    while heap and n_new < budget:
        neg, pair = heapq.heappop(heap)
        if -neg != stats.get(pair, 0):
            continue  # stale heap entry: the pair's count changed since it was pushed
        if -neg < min_count:
            break
        out.append(pair)
        merged = pair[0] + pair[1]
        if merged not in known:  # two merges may spell the same token; CLIP's vocabulary has it once
            known.add(merged)
            n_new += 1
        changed: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            sym, f = words[i], freqs[i]
            if not any(p == pair for p in zip(sym, sym[1:])):
                continue  # the index is not pruned when a word loses a pair
            for p in zip(sym, sym[1:]):
                stats[p] -= f
                changed.add(p)
            new: list[str] = []
            j = 0
            while j < len(sym):
                if j + 1 < len(sym) and (sym[j], sym[j + 1]) == pair:
                    new.append(merged)
                    j += 2
                else:
                    new.append(sym[j])
                    j += 1
            words[i] = new
            for p in zip(new, new[1:]):
                stats[p] += f
                where.setdefault(p, set()).add(i)
                changed.add(p)
        stats.pop(pair, None)
        for p in sorted(changed - {pair}):
            if stats[p] > 0:
                heapq.heappush(heap, (-stats[p], p))
    return out


def write_tokenizer_files(out_dir: Path, merges: list[tuple[str, str]]) -> None:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs in CLIP's layout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    vocab_list = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))


def load_tokenizer(path: Path):  # -> CLIPTokenizer
    """Load the tokenizer directory with transformers' ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))


def train_tokenizer(out_dir: Path, *, texts: list[str] | None = None, vocab_size: int = 8192) -> Path:
    """Stage 1: learn merges on the training captions plus the language corpus; write a CLIPTokenizer directory."""
    texts = all_captions() + corpus_texts() if texts is None else texts
    write_tokenizer_files(out_dir, learn_merges(texts, vocab_size=vocab_size))
    return out_dir
