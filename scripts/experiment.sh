#!/usr/bin/env bash
# The experiment of docs/results.md: the bundled teacher distilled into students by every method,
# over seeds, head counts, τ, the attention term's weight γ and attached/detached alignment
# weights; each student scored on the test split. Runs land in target/experiment/<run>/
# (checkpoint, metrics.jsonl, alignment.json) and their scores in target/experiment/results.jsonl;
# finished runs are skipped, so the script resumes after an interruption. Then
# scripts/experiment_report.py writes docs/results.md and the plots under docs/results/.
#   STEPS=250 BATCH=16 SEEDS="1 2 3" scripts/experiment.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-250}"
BATCH="${BATCH:-16}"
SEEDS="${SEEDS:-1 2 3}"
TEACHER="${TEACHER:-www/models/teacher}"
OUT=target/experiment
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
  echo "   $score"
}

for seed in $SEEDS; do
  for method in ce kd one-to-one amad-mse amad-kl amad-token; do
    run "$method-h2-s$seed" --method "$method" --student-heads 2 --seed "$seed"
  done
  for heads in 1 4; do
    for method in one-to-one amad-kl; do
      run "$method-h$heads-s$seed" --method "$method" --student-heads "$heads" --seed "$seed"
    done
  done
  run "amad-kl-tau0.1-s$seed" --method amad-kl --tau 0.1 --seed "$seed"
  for gamma in 0.3 0.1; do
    run "amad-kl-gamma$gamma-s$seed" --method amad-kl --gamma "$gamma" --seed "$seed"
  done
  run "amad-kl-detached-s$seed" --method amad-kl --detach-weights --seed "$seed"
done
if ! grep -q '"run": "teacher"' "$OUT/results.jsonl"; then
  score=$(./target/release/amad eval --model "$TEACHER" --split test --n 200 --json 2>/dev/null)
  echo "{\"run\": \"teacher\", \"args\": \"\", \"seconds\": 0, \"test\": $score}" >> "$OUT/results.jsonl"
fi
.venv/bin/python scripts/experiment_report.py "$OUT" "STEPS=$STEPS BATCH=$BATCH SEEDS=\"$SEEDS\""
