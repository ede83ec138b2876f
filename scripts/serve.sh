#!/usr/bin/env bash
# Builds the page and serves it on http://127.0.0.1:8080 (installs trunk and wasm-bindgen-cli on
# first use). The same static files, in dist/, work from any static host.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --web
exec trunk serve --release --offline --address 127.0.0.1 --port "${PORT:-8080}"
