"""Stage 1: a CLIP-format BPE tokenizer learned on the training captions and the language corpus.

The files follow CLIP's format exactly (``vocab.json`` + ``merges.txt``): byte-level symbols, a ``</w>``
end-of-word suffix, lower-cased text, ``<|startoftext|>`` / ``<|endoftext|>`` specials, 77 positions,
pad token = eos as in SD 1.x. The vocabulary is laid out like CLIP's: 256 byte symbols, the same with
``</w>``, one token per learned merge, then the two specials.
"""

from __future__ import annotations

import json
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


def learn_merges(texts: list[str], *, vocab_size: int = 8192, min_count: int = 2) -> list[tuple[str, str]]:
    """BPE merges learned by the ``tokenizers`` library on lower-cased ``texts``, in CLIP's conventions.

    Words are split like CLIP (whitespace, then :data:`_WORD_PATTERN`'s pieces), mapped to byte symbols and
    given the ``</w>`` end-of-word suffix; ``vocab_size`` counts the 512 byte symbols, the merges and the
    two specials. We use the library's trainer (fast, deterministic) and keep only its merge list, which
    :func:`write_tokenizer_files` lays out as CLIP's ``vocab.json`` + ``merges.txt``.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,
        min_frequency=min_count,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator([t.lower() for t in texts], trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    base = set(bytes_to_unicode().values())
    known = base | {b + "</w>" for b in base}
    out: list[tuple[str, str]] = []
    for a, b in (m.split(" ") if isinstance(m, str) else m for m in merges):
        if a in known and b in known and a + b not in known:  # CLIP's layout has every token once
            out.append((a, b))
            known.add(a + b)
        if len(out) >= vocab_size - 2 - 2 * len(base):
            break
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
