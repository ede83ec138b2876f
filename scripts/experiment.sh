#!/usr/bin/env bash
# The experiment of docs/results.md: the bundled teacher distilled into students by every method,
# over seeds, head counts, τ, the attention term's weight γ and attached/detached alignment
# weights; each student scored on the test split. Runs land in target/experiment/<run>/
# (checkpoint, metrics.jsonl, alignment.json) and their scores in target/experiment/results.jsonl;
# finished runs are skipped, so the script resumes after an interruption. Then
# scripts/experiment_report.py writes docs/results.md and the plots under docs/results/.
#   STEPS=250 BATCH=16 SEEDS="1 2 3" JOBS=1 scripts/experiment.sh
# JOBS=2 runs two distillations side by side: on a 2-core machine lavapipe leaves about a third of
# the CPU idle in one run (it waits at the barrier ending each dispatch), so two together finish
# sooner than one after the other; each run's minutes then count the time it shared the machine.
# OUT=DIR writes the runs there instead (the report still goes to docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-250}"
BATCH="${BATCH:-16}"
SEEDS="${SEEDS:-1 2 3}"
JOBS="${JOBS:-1}"
TEACHER="${TEACHER:-www/models/teacher}"
OUT="${OUT:-target/experiment}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo build --release -q
mkdir -p "$OUT"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import matplotlib" 2>/dev/null || .venv/bin/pip install -q matplotlib

# run NAME [distill options...]
run() {
  local name="$1"; shift
  local dir="$OUT/$name"
  if grep -q "\"run\": \"$name\"" "$OUT/results.jsonl" 2>/dev/null; then return; fi
  rm -rf "$dir"
  echo "== $name"
  local t0=$SECONDS
  ./target/release/amad distill --teacher "$TEACHER" --out "$dir" --steps "$STEPS" --batch "$BATCH" \
    --lr 2e-3 --warmup 20 --checkpoint-every "$STEPS" --eval-every 50 --eval-n 50 "$@" 2>"$dir.log" >/dev/null
  local seconds=$((SECONDS - t0))
  local score
  score=$(./target/release/amad eval --model "$dir" --split test --n 200 --json 2>/dev/null)
  echo "{\"run\": \"$name\", \"args\": \"$*\", \"seconds\": $seconds, \"test\": $score}" >> "$OUT/results.jsonl"
  echo "   $name: $score"
}

# wait_below N: wait until fewer than N runs are going; a failed run stops the script (wait -n
# returns its status, where a plain wait would not).
wait_below() {
  while [ "$(jobs -rp | wc -l)" -ge "$1" ]; do wait -n; done
}

# launch NAME [distill options...]: run in the background once fewer than JOBS runs are going.
launch() {
  wait_below "$JOBS"
  run "$@" &
}

for seed in $SEEDS; do
  for method in ce kd one-to-one amad-mse amad-kl amad-token; do
    launch "$method-h2-s$seed" --method "$method" --student-heads 2 --seed "$seed"
  done
  for heads in 1 4; do
    for method in one-to-one amad-kl; do
      launch "$method-h$heads-s$seed" --method "$method" --student-heads "$heads" --seed "$seed"
    done
  done
  launch "amad-kl-tau0.1-s$seed" --method amad-kl --tau 0.1 --seed "$seed"
  for gamma in 0.3 0.1; do
    launch "amad-kl-gamma$gamma-s$seed" --method amad-kl --gamma "$gamma" --seed "$seed"
  done
  launch "amad-kl-detached-s$seed" --method amad-kl --detach-weights --seed "$seed"
done
wait_below 1
if ! grep -q '"run": "teacher"' "$OUT/results.jsonl"; then
  score=$(./target/release/amad eval --model "$TEACHER" --split test --n 200 --json 2>/dev/null)
  echo "{\"run\": \"teacher\", \"args\": \"\", \"seconds\": 0, \"test\": $score}" >> "$OUT/results.jsonl"
fi
.venv/bin/python scripts/experiment_report.py "$OUT" "STEPS=$STEPS BATCH=$BATCH SEEDS=\"$SEEDS\" JOBS=$JOBS"
