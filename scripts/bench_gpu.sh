#!/usr/bin/env bash
# The benchmarks on a machine with a real GPU, each beside PyTorch on the same GPU (CUDA):
#   amad bench kernels  beside cuBLAS fp32 through PyTorch (scripts/bench_numpy.py --torch-cuda)
#   amad bench step     at batch 32 and 256, beside PyTorch eager on CUDA (scripts/bench_step_torch.py)
# Usage: scripts/bench_gpu.sh [OUTDIR]. Needs target/release/amad (built beforehand: the GPU machine
# may have no Rust) and a python3 with torch and transformers. Writes OUTDIR/benchmarks-gpu.md; the
# copy in docs/ is one such run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-gpu}
mkdir -p "$out"
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
amad=./target/release/amad
$amad bench kernels --json --iters 50 | tee "$out/amad.jsonl"
for b in 32 256; do $amad bench step --json --batch $b --iters 10 | tee -a "$out/amad.jsonl"; done
python3 scripts/bench_numpy.py --torch-cuda | tee "$out/reference.jsonl"
for b in 32 256; do python3 scripts/bench_step_torch.py $b --device cuda --iters 10 | tee -a "$out/reference.jsonl"; done
python3 scripts/bench_report.py "$out/amad.jsonl" "$out/reference.jsonl" "$out/benchmarks-gpu.md" > /dev/null
echo "wrote $out/benchmarks-gpu.md"
