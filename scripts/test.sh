#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting and lints (both targets), runs
# every native test on wgpu (lavapipe where there is no GPU), the PyTorch package's tests against
# `amad loss`, builds the wasm32 target, builds the page with trunk, and tests the page in
# headless Chromium (tests/browser/run.mjs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser --python
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"   # silences a harmless lavapipe warning
cargo fmt --all --check
cargo clippy --release --all-targets -- -D warnings
cargo clippy --release --target wasm32-unknown-unknown -- -D warnings
log=$(mktemp)
cargo test --release 2>&1 | tee "$log"
# The kernels whose code follows lavapipe's vector width (the subgroup matmul's 8 or 16 lanes) again
# at the width the run above did not use: amad asks for 512 bits where the CPU has AVX-512
# (src/gpu/mod.rs, widen_lavapipe), and Mesa's default is 256.
other_width=256
grep -qw avx512f /proc/cpuinfo || other_width=512
LP_NATIVE_VECTOR_WIDTH=$other_width cargo test --release --test matmul --test attention --test half 2>&1 | tee -a "$log"
# The PyTorch package against the amad binary the tests above built; reported and counted like the
# page's checks.
python_status=0
AMAD_BIN=target/release/amad .venv/bin/python -m unittest discover -s python/tests 2>&1 | tee -a "$log" || python_status=$?
cargo build --release --target wasm32-unknown-unknown --lib
trunk build --release --offline
# The page's tests: reported, and counted into the totals, even when some fail.
browser_status=0
node tests/browser/run.mjs dist 2>&1 | tee -a "$log" || browser_status=$?
# One closing line with the totals over every test binary and the browser checks.
awk '/^test result:/ { p += $4; f += $6 } /^browser: / { p += $2; f += $4 }
  /^Ran [0-9]+ tests? in / { py += $2 }
  /^FAILED \(/ { s = $0; while (match(s, /(failures|errors)=[0-9]+/)) { x = substr(s, RSTART, RLENGTH); sub(/^[a-z]+=/, "", x); pf += x; s = substr(s, RSTART + RLENGTH) } }
  END { printf "amad: %d passed, %d failed\n", p + py - pf, f + pf }' "$log"
[ "$python_status" = 0 ] || exit "$python_status"
exit "$browser_status"
