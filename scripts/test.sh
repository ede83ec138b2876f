#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting and lints (both targets), runs
# every native test on wgpu (lavapipe where there is no GPU), builds the wasm32 target, builds
# the page with trunk, and tests the page in headless Chromium (tests/browser/run.mjs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"   # silences a harmless lavapipe warning
cargo fmt --all --check
cargo clippy --release --all-targets -- -D warnings
cargo clippy --release --target wasm32-unknown-unknown -- -D warnings
log=$(mktemp)
cargo test --release 2>&1 | tee "$log"
cargo build --release --target wasm32-unknown-unknown
trunk build --release --offline
# The page's tests: reported, and counted into the totals, even when some fail.
browser_status=0
node tests/browser/run.mjs dist 2>&1 | tee -a "$log" || browser_status=$?
# One closing line with the totals over every test binary and the browser checks.
awk '/^test result:/ { p += $4; f += $6 } /^browser: / { p += $2; f += $4 } END { printf "amad: %d passed, %d failed\n", p, f }' "$log"
exit "$browser_status"
