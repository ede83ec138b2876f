#!/usr/bin/env bash
# A distillation step from a full-size Hub captioner (nlpconnect/vit-gpt2-image-captioning's shape,
# random weights: scripts/make_random_hub_model.py) into its default student, amad beside
# PyTorch eager (scripts/bench_distill_torch.py) on the same machine in the same run, alternating
# for ROUNDS rounds (default 2); the report takes each figure's median and writes
# docs/benchmarks-distill.md. BATCH (default 16) and LEN (default 16) set the step.
#   scripts/bench_distill.sh                 # here: lavapipe beside PyTorch on the CPU
#   DEVICE=cuda scripts/bench_distill.sh     # on a GPU machine: PyTorch on CUDA
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/hub_bench_setup.sh
batch="${BATCH:-16}"
len="${LEN:-16}"
mkdir -p target/bench
: > target/bench/distill-amad.jsonl
: > target/bench/distill-torch.jsonl
for round in $(seq "${ROUNDS:-2}"); do
  echo "round $round"
  ./target/release/amad bench distill --json --teacher "$model" --batch "$batch" --len "$len" | tee -a target/bench/distill-amad.jsonl
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python scripts/bench_distill_torch.py --teacher "$model" \
    --batch "$batch" --len "$len" --device "${DEVICE:-cpu}" 2>/dev/null | tee -a target/bench/distill-torch.jsonl
done
python3 - <<'PY'
import json, statistics, subprocess, sys
sys.path.insert(0, "scripts")
from bench_jsonl import load  # noqa: E402
amad, amad_peak, amad_memory = load("target/bench/distill-amad.jsonl", "name")
torch, torch_peak, _ = load("target/bench/distill-torch.jsonl", "name")
med = lambda rs: statistics.median(r["ms"] for r in rs)
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
first = lambda rows: next(iter(rows.values()))[0]
lines = [
    "# Distillation from a full-size Hub captioner",
    "",
    "Written by `scripts/bench_distill.sh`: `amad bench distill` beside `scripts/bench_distill_torch.py`",
    "(transformers, eager attention, the same losses), alternating in one run on one machine; each",
    "figure is the median over rounds of the best of 2 after a warm-up. The teacher has",
    "nlpconnect/vit-gpt2-image-captioning's shape with random weights (ViT-B/16 + 12-layer GPT-2,",
    "239 M parameters); the student is amad's default for it (4 × 192 × 3 + 2 × 192 × 3, 13.0 M).",
    f"Step: {first(amad)['shape']}, CE + T²·KD + AMAD-KL over all three attention kinds, AdamW.",
    "",
    f"- CPU: {cpu}",
    f"- amad: {first(amad)['adapter']}",
    f"- PyTorch: {first(torch)['adapter']}",
    "",
    "| | amad (ms) | PyTorch (ms) | amad / PyTorch |",
    "|---|---|---|---|",
]
for name, label in [("hub_teacher_forward", "teacher forward (logits and paired maps)"),
                    ("hub_distill_step_amad_kl", "whole distillation step")]:
    a, t = med(amad[name]), med(torch[name])
    lines.append(f"| {label} | {a:.0f} | {t:.0f} | {a / t:.2f} |")
if amad_peak and torch_peak:
    lines += ["", f"Peak resident memory: amad {max(amad_peak) / 1e6:.0f} MB (on a CPU adapter the device's "
              f"buffers live in the process), PyTorch {max(torch_peak) / 1e6:.0f} MB."]
memory = [m for m in amad_memory if "device_tensor_bytes" in m]
if memory:
    m = memory[-1]
    lines += ["", f"Device memory amad allocated by the end of a step: {m['device_tensor_bytes'] / 1e6:.0f} MB of tensor "
              f"buffers and {m['device_image_bytes'] / 1e6:.0f} MB of operand images (a CPU adapter's), against its "
              f"estimate of {m['estimated_bytes'] / 1e6:.0f} MB (docs/perf-notes.md)."]
lines += ["", "<!-- notes -->", "<!-- /notes -->", ""]
path = "docs/benchmarks-distill.md"
try:
    old = open(path).read()
    notes = old[old.index("<!-- notes -->"):old.index("<!-- /notes -->")]
    lines[-3] = notes
except (OSError, ValueError):
    pass
open(path, "w").write("\n".join(lines))
print(f"wrote {path}")
PY
