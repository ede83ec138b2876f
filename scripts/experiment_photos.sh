#!/usr/bin/env bash
# The experiment of docs/results.md on your own photos and a Hub teacher: the teacher (a
# checkpoint directory, e.g. nlpconnect/vit-gpt2-image-captioning downloaded) distilled into its
# default student (fewer heads than the teacher on both sides) by every method, over seeds, on the
# photos in PHOTOS_DIR. A share of the photos is held out; each student is scored by how well its
# captions agree with the teacher's on them (BLEU-4, CIDEr-D, ROUGE-L). The teacher captions the
# photos once: the first run's targets.jsonl is copied into every other run.
#   scripts/experiment_photos.sh TEACHER_DIR PHOTOS_DIR
#   STEPS=600 BATCH=16 SEEDS="1 2 3" VAL_FRACTION=0.1 OUT=target/experiment-photos scripts/experiment_photos.sh ...
# Runs land in OUT/<method>-s<seed>/ (checkpoint, metrics.jsonl, alignment.json); finished runs are
# skipped, so the script resumes after an interruption. Then scripts/experiment_photos_report.py
# writes OUT/results.md (and its plots, where matplotlib is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
TEACHER="$1"
PHOTOS="$2"
STEPS="${STEPS:-600}"
BATCH="${BATCH:-16}"
SEEDS="${SEEDS:-1 2 3}"
VAL_FRACTION="${VAL_FRACTION:-0.1}"
EVAL_EVERY="${EVAL_EVERY:-$(( STEPS / 5 > 0 ? STEPS / 5 : 1 ))}"
OUT="${OUT:-target/experiment-photos}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
[ -x target/release/amad ] || cargo build --release -q
mkdir -p "$OUT"

for seed in $SEEDS; do
  for method in ce kd one-to-one amad-mse amad-kl amad-token; do
    name="$method-s$seed"
    dir="$OUT/$name"
    if [ -f "$dir/done" ]; then continue; fi
    rm -rf "$dir"
    mkdir -p "$dir"
    [ -f "$OUT/targets.jsonl" ] && cp "$OUT/targets.jsonl" "$dir/"
    echo "== $name"
    t0=$SECONDS
    ./target/release/amad distill --teacher "$TEACHER" --images "$PHOTOS" --out "$dir" \
      --method "$method" --seed "$seed" --steps "$STEPS" --batch "$BATCH" \
      --val-fraction "$VAL_FRACTION" --eval-every "$EVAL_EVERY" --checkpoint-every "$STEPS" \
      2>"$dir.log" >/dev/null || { echo "   $name failed: see $dir.log"; tail -3 "$dir.log"; exit 1; }
    [ -f "$OUT/targets.jsonl" ] || cp "$dir/targets.jsonl" "$OUT/"
    echo "{\"seconds\": $((SECONDS - t0))}" > "$dir/done"
    echo "   $name: $(grep '"eval"' "$dir/metrics.jsonl" | tail -1)"
  done
done
# The project's .venv where there is one (it may have matplotlib for the plots), else python3.
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
"$py" scripts/experiment_photos_report.py "$OUT" "$TEACHER" "$PHOTOS" \
  "STEPS=$STEPS BATCH=$BATCH SEEDS=\"$SEEDS\" VAL_FRACTION=$VAL_FRACTION"
