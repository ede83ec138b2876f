#!/usr/bin/env bash
# Teacher recipes side by side, for a machine with a real GPU (the runs share it): each variant
# NAME:OPTIONS trains with `amad train-teacher --out OUTDIR/NAME OPTIONS`, all at once; then each
# finished teacher is scored on 500 validation scenes (to choose by) and 200 test scenes (to
# report), one JSON line per teacher in OUTDIR/sweep.jsonl. TRAIN_SECONDS (default: no limit)
# stops the training; a stopped run has its checkpoint and metrics.jsonl but no scores.
#   scripts/teacher_sweep.sh OUTDIR 'w5:--shape-loss 5' 'w5-lr2e-3:--shape-loss 5 --lr 2e-3' ...
# Needs target/release/amad (built beforehand: the GPU machine may have no Rust).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$1
shift
mkdir -p "$out"
amad=./target/release/amad
for v in "$@"; do
  name=${v%%:*}
  # shellcheck disable=SC2086 # the options are words
  timeout "${TRAIN_SECONDS:-0}" $amad train-teacher --out "$out/$name" ${v#*:} >"$out/$name.log" 2>&1 &
done
wait
for v in "$@"; do
  name=${v%%:*}
  if grep -q '^validation' "$out/$name.log"; then
    val=$($amad eval --model "$out/$name" --split validation --n 500 --json)
    test=$($amad eval --model "$out/$name" --split test --n 200 --json)
    echo "{\"run\": \"$name\", \"args\": \"${v#*:}\", \"validation\": $val, \"test\": $test}" | tee -a "$out/sweep.jsonl"
  else
    echo "$name: did not finish; see $out/$name.log"
  fi
done
