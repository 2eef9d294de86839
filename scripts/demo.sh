#!/usr/bin/env bash
# The main job on the embedded default (the MiniCanvas world): erase one concept with HiRM,
# show original vs erased images, measure it with the UnlearnCanvas protocol, write a report.
#   bash scripts/demo.sh [CONCEPT] [KIND] [OUT_DIR]   (defaults: Cats, object, runs/demo)
set -euo pipefail
concept="${1:-Cats}"
kind="${2:-object}"
out="${3:-runs/demo}"
mkdir -p "$out"
hirm erase --concept "$concept" --kind "$kind" --out "$out/patch.safetensors" --overwrite
hirm info "$out/patch.safetensors"
if [ "$kind" = style ]; then target="A Horses image in $concept style."; other="A Horses image in Pastel style."
else target="A $concept image in Pastel style."; other="A Horses image in Pastel style."; fi
hirm generate --patch "$out/patch.safetensors" --prompt "$target" --prompt "$other" --seeds 0-3 \
  --out "$out/images" --overwrite
hirm eval canvas --target "$concept" --patch "$out/patch.safetensors" --out "$out/canvas" --overwrite
hirm report "$out/canvas" --out "$out/report" --overwrite
echo "report: $out/report/index.html  images: $out/images/grid.png"
