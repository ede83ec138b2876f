#!/usr/bin/env bash
# Runs `amad bench kernels` and the numpy/OpenBLAS comparison in the same run, on the same machine,
# prints both as JSON lines, and writes docs/benchmarks.md from them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q numpy threadpoolctl; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
mkdir -p target/bench docs
./target/release/amad bench kernels --json "$@" | tee target/bench/amad.jsonl
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be set on this workplace's machines for old OpenBLAS
# builds; they slow a current numpy, so they are unset for this command only.
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python scripts/bench_numpy.py | tee target/bench/numpy.jsonl
python3 scripts/bench_report.py target/bench/amad.jsonl target/bench/numpy.jsonl > /dev/null
echo "wrote docs/benchmarks.md"
