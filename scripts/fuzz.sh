#!/usr/bin/env bash
# Fuzzes every parser of files from strangers (fuzz/fuzz_targets/: safetensors, pytorch_model.bin,
# its pickle and zip alone, tokenizer.json, vocab.json + merges.txt, the JSON configs, images) for
# SECONDS each (default 60), JOBS targets at a time (default 2). Seeds come from fuzz/seeds/
# (in the repository); what libFuzzer learns goes to fuzz/corpus/ and crashes to fuzz/artifacts/
# (neither tracked). Every crash found becomes a plain regression test in tests/ (stable, CI).
#   scripts/fuzz.sh 600            # ten minutes per target
#   TARGETS="pickle zip" scripts/fuzz.sh 30
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets="${TARGETS:-safetensors torch_bin pickle zip tokenizer_json vocab_merges configs image saved_run}"
cargo +nightly fuzz build -O
mkdir -p target/fuzz-logs
run() {
  local t="$1"
  mkdir -p "fuzz/corpus/$t"
  # -rss_limit_mb: a parser that allocates what a header claims fails here, not on a user's machine.
  if cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      > "target/fuzz-logs/$t.log" 2>&1; then
    echo "$t: $(grep -m1 'stat::number_of_executed_units' "target/fuzz-logs/$t.log" | awk '{print $2}') runs, no crash"
  else
    echo "$t: FAILED, see target/fuzz-logs/$t.log and fuzz/artifacts/$t/"
    return 1
  fi
}
# Each target's status is collected by its pid: a bare `wait` returns 0 whatever its jobs did.
status=0
pids=()
for t in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do sleep 1; done
  run "$t" &
  pids+=("$!")
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit "$status"
