"""Regenerate ``src/hirm/data/world_corpus.txt.gz``, the language text MiniCLIP's text tower learns from.

COCO-10k captions minus the 1,000 rows that ``hirm eval utility`` judges (``coco_1k.csv``), plus the I2P
prompts minus UnlearnDiffAtk's nudity subset (``unlearndiffatk_nudity.csv``), whitespace-normalised and
de-duplicated case-insensitively, in file order. Evaluation prompts stay out of the world's training text.

    python scripts/make_world_corpus.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "src" / "hirm" / "data"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def corpus(data: Path) -> list[str]:
    held_coco = {r["case_number"] for r in _rows(PACKAGE_DATA / "coco_1k.csv")}
    held_i2p = {r["case_number"] for r in _rows(PACKAGE_DATA / "unlearndiffatk_nudity.csv")}
    texts = [r["prompt"] for r in _rows(data / "coco_30k_10k.csv") if r["case_number"] not in held_coco]
    texts += [r["prompt"] for r in _rows(data / "i2p.csv") if r["case_number"] not in held_i2p]
    out, seen = [], set()
    for text in texts:
        text = " ".join(text.split())
        if text and text.lower() not in seen:
            seen.add(text.lower())
            out.append(text)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with the shared CSVs")
    p.add_argument("--out", type=Path, default=PACKAGE_DATA / "world_corpus.txt.gz")
    a = p.parse_args()
    lines = corpus(a.data)
    with gzip.GzipFile(a.out, "wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
    print(f"{len(lines)} lines -> {a.out}")


if __name__ == "__main__":
    main()
