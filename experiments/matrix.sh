#!/usr/bin/env bash
# Runs the fitting check (python -m beltcrack_jax.train.overfit) for each variant line of a file
# ("name | flags"), appending the results to a log.
#   bash experiments/matrix.sh VARIANTS_FILE LOG [common flags...]
set -u
variants=$1; log=$2; shift 2
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184
while IFS='|' read -r name flags; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  out=$(.venv/bin/python -m beltcrack_jax.train.overfit "$@" $flags 2>&1 | grep -v "^W1\|^I1")
  { echo "== $name |$flags | $*"; echo "$out" | grep "RESULT\|overfit:\|\[step\|Error" | sed 's/train\/loss\/\(ciou\|nwd\|unnorm\)[^,]*, //g' | cut -c1-170; } >> "$log"
done < "$variants"
