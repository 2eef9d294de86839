#!/usr/bin/env bash
# `hirm compare` split into concept groups run as parallel processes on one device (e.g. one GPU that a
# single process leaves mostly idle), then merged into one table (`hirm compare --merge`). Each concept's
# figures do not depend on the others (per-image seeds), so the merged table is the one a single run gives.
#   [P=8] [NGROUPS=4] [DEVICE=cuda] [SEEDS=188,288] [PRECISION=bf16] bash scripts/compare_parallel.sh OUT METHOD...
# Writes OUT/parts/<method>-<group>/ (resumable: re-run the same command) and OUT/table-<time>/compare.md + .csv.
# EXTRA: more `hirm compare` options for every part (e.g. "--sampler-steps 5" for a smoke run).
set -euo pipefail
out="${1:?usage: compare_parallel.sh OUT METHOD...}"; shift
[ $# -ge 1 ] || { echo "compare_parallel.sh: give at least one method (see hirm compare --help)" >&2; exit 2; }
P="${P:-8}" GROUPS_="${NGROUPS:-4}" DEVICE="${DEVICE:-cuda}" SEEDS="${SEEDS:-188,288}" PRECISION="${PRECISION:-bf16}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# CONCEPTS (optional): the concepts to run, space-separated; default every world style, then every object.
mapfile -t groups < <(python3 -c "
import sys, hirm.world as w
names = sys.argv[2].split() or [*w.STYLES, *w.OBJECTS]
k = max(1, min(int(sys.argv[1]), len(names)))
for i in range(k):
    print(' '.join(names[i * len(names) // k:(i + 1) * len(names) // k]))
" "$GROUPS_" "${CONCEPTS:-}")
mkdir -p "$out/parts"
jobs=(); parts=()
for m in "$@"; do
  for i in "${!groups[@]}"; do
    jobs+=("$m $i ${groups[$i]}"); parts+=("--merge" "$out/parts/$m-$i")
  done
done
run_one() {  # method group concepts...
  local m=$1 i=$2; shift 2; local args=(); for c in "$@"; do args+=(-c "$c"); done
  hirm compare --out "$OUT/parts/$m-$i" --method "$m" --seeds "$SEEDS" --precision "$PRECISION" \
    --device "$DEVICE" --quiet ${EXTRA:-} "${args[@]}" > "$OUT/parts/$m-$i.log" 2>&1 \
    && echo "$m group $i done" || { echo "$m group $i failed: see $OUT/parts/$m-$i.log" >&2; return 1; }
}
export -f run_one; export OUT="$out" SEEDS PRECISION DEVICE EXTRA="${EXTRA:-}"
printf '%s\n' "${jobs[@]}" | xargs -P "$P" -d '\n' -I{} bash -c 'run_one $1' _ {}
methods=(); for m in "$@"; do methods+=(--method "$m"); done
table="$out/table-$(date +%Y%m%d-%H%M%S)"  # a new directory per merge: nothing is overwritten
hirm compare --out "$table" "${parts[@]}" "${methods[@]}" > /dev/null
echo "table: $table/compare.md"
