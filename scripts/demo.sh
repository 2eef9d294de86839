#!/usr/bin/env bash
# The main job on the embedded default (the MiniCanvas world): erase one concept with HiRM,
# show original vs erased images, measure it with the UnlearnCanvas protocol, write a report.
#   bash scripts/demo.sh [CONCEPT] [KIND] [OUT_DIR]   (defaults: Cats, object, runs/demo)
# HiRM-S toward the concept's super-category, with the settings measured to erase on MiniCLIP
# (read the final hidden state, 100 steps, lr 5e-4); the paper's reference settings do not erase Cats on
# this small encoder (tests/test_hirm_world.py). Sampling uses bf16 autocast (about 2x faster on CPU).
set -euo pipefail
concept="${1:-Cats}"
kind="${2:-object}"
out="${3:-runs/demo}"
super=$(python3 -c "import sys, hirm.world as w; n = w.canonical_name(sys.argv[1]); print({**w.STYLE_SUPER, **w.OBJECT_SUPER}[n])" "$concept")
mkdir -p "$out"
hirm erase --concept "$concept" --kind "$kind" --target "super:$super" --read-site final --steps 100 --lr 5e-4 \
  --out "$out/patch.safetensors" --overwrite
hirm info "$out/patch.safetensors"
if [ "$kind" = style ]; then target="A Horses image in $concept style."; other="A Horses image in Rust style."
else target="A $concept image in Pastel style."; other="A Horses image in Pastel style."; fi
hirm generate --patch "$out/patch.safetensors" --prompt "$target" --prompt "$other" --seeds 0-3 \
  --out "$out/images" --overwrite
hirm eval canvas --concept "$concept" --patch "$out/patch.safetensors" --precision bf16 --out "$out/canvas" --overwrite
hirm report "$out/canvas" --out "$out/report" --overwrite
echo "report: $out/report/index.html  images: $out/images/grid.png"
