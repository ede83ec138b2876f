#!/usr/bin/env bash
# Every benchmark, each beside its reference measured in the same run on the same machine:
#   amad bench kernels  beside numpy/OpenBLAS matmul (scripts/bench_numpy.py)
#   amad bench step     beside PyTorch eager (scripts/bench_step_torch.py; skipped without torch)
# Prints the JSON lines and writes docs/benchmarks.md from them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import numpy, threadpoolctl" 2>/dev/null || .venv/bin/pip install -q numpy threadpoolctl
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
mkdir -p target/bench docs
# The machines drift by a fifth within minutes, so amad and the references alternate for ROUNDS
# rounds and the report takes each figure's median round.
: > target/bench/amad.jsonl
: > target/bench/reference.jsonl
for round in $(seq "${ROUNDS:-3}"); do
  echo "round $round"
  ./target/release/amad bench kernels --json | tee -a target/bench/amad.jsonl
  # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be set on this workplace's machines for old OpenBLAS
  # builds; they slow a current numpy, so they are unset for these commands only.
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python scripts/bench_numpy.py | tee -a target/bench/reference.jsonl
  ./target/release/amad bench step --json | tee -a target/bench/amad.jsonl
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python scripts/bench_step_torch.py 2>/dev/null | tee -a target/bench/reference.jsonl
done
python3 scripts/bench_report.py target/bench/amad.jsonl target/bench/reference.jsonl > /dev/null
echo "wrote docs/benchmarks.md"
