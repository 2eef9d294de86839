"""Stage 1: a small CLIP-format BPE tokenizer learned on the training captions.

The files follow CLIP's format exactly (``vocab.json`` + ``merges.txt``): byte-level symbols, a ``</w>``
end-of-word suffix, lower-cased text, ``<|startoftext|>`` / ``<|endoftext|>`` specials, 77 positions,
pad token = eos as in SD 1.x. The vocabulary is laid out like CLIP's: 256 byte symbols, the same with
``</w>``, one token per learned merge, then the two specials.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from .captions import all_captions

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.UNICODE)


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


def learn_merges(texts: list[str], *, max_merges: int = 2000, min_count: int = 2) -> list[tuple[str, str]]:
    """Greedy BPE merges on lower-cased words (most frequent pair first; ties broken lexicographically)."""
    b2u = bytes_to_unicode()
    words = Counter(w for t in texts for w in _WORD_RE.findall(t.lower()))
    corpus = {_word_symbols(w, b2u): c for w, c in words.items()}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for syms, c in corpus.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best_count = max(pairs.values())
        if best_count < min_count:
            break
        best = min(p for p, c in pairs.items() if c == best_count)
        merges.append(best)
        new: dict[tuple[str, ...], int] = {}
        for syms, c in corpus.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        corpus = new
    return merges


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


def train_tokenizer(out_dir: Path, *, texts: list[str] | None = None, max_merges: int = 2000) -> Path:
    """Stage 1: learn merges on all training captions and write a CLIPTokenizer directory."""
    texts = all_captions() if texts is None else texts
    write_tokenizer_files(out_dir, learn_merges(texts, max_merges=max_merges))
    return out_dir
