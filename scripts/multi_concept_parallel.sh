#!/usr/bin/env bash
# benchmarks/multi_concept.py split into groups of sampling seeds run as parallel processes on one device
# (e.g. one GPU that a single process leaves mostly idle), then pooled with `--merge`. Every group trains
# the same edits (fixed training seed) and each image has its own sampling seed, so the pooled table holds
# the images a single run on all the seeds would judge.
#   [DEVICE=cuda] bash scripts/multi_concept_parallel.sh OUT "188,288 388,488" [multi_concept.py options...]
#   e.g. bash scripts/multi_concept_parallel.sh runs/empty "188,288 388,488 588,688" --target empty --aim \
#          --strategies preserved --keep-other-domain --steps 400 --uce
# Writes OUT/seeds_<a>_<b>/ per group (its log beside it; a finished group is not run again) and the pooled
# table to OUT/multi_concept.md + .json.
set -euo pipefail
out="${1:?usage: multi_concept_parallel.sh OUT \"SEEDS SEEDS ...\" [multi_concept.py options...]}"
groups="${2:?give the seed groups, e.g. \"188,288 388,488\"}"; shift 2
DEVICE="${DEVICE:-cuda}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
here="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out"
pids=(); parts=()
for g in $groups; do
  part="$out/seeds_${g//,/_}"; parts+=("$part")
  if [ -f "$part/multi_concept.json" ]; then echo "seeds $g: done before"; continue; fi
  python3 "$here/benchmarks/multi_concept.py" --device "$DEVICE" --out "$part" --seeds "$g" "$@" \
    > "$part.log" 2>&1 &
  pids+=("$!")
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { echo "a seed group failed: see $out/seeds_*.log" >&2; exit 1; }
python3 "$here/benchmarks/multi_concept.py" --out "$out" --merge "${parts[@]}" --overwrite > /dev/null
echo "table: $out/multi_concept.md"
