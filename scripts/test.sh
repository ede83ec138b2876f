#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs every native test on wgpu (lavapipe
# where there is no GPU), builds the wasm32 target, and builds the page with trunk.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --web
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"   # silences a harmless lavapipe warning
cargo test --release
cargo build --release --target wasm32-unknown-unknown
trunk build --release --offline
echo "test.sh: native tests passed; wasm32 and the page build"
