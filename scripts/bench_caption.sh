#!/usr/bin/env bash
# Caption latency of a full-size Hub captioner (nlpconnect/vit-gpt2-image-captioning's shape,
# random weights: scripts/make_random_hub_model.py), amad beside transformers on the same CPU in
# the same run, alternating for ROUNDS rounds (default 3), amad both in f32 and with
# --half-weights; the report takes each figure's median. Writes docs/benchmarks-caption.md. BEAMS=4 times beam search instead of greedy decoding;
# REPORT_ONLY=1 writes the report again from the last run's target/bench/caption-*.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/hub_bench_setup.sh
images=(tests/fixtures/photos/astronaut.png tests/fixtures/photos/coffee.png tests/fixtures/photos/chelsea.png)
beams="${BEAMS:-1}"
mkdir -p target/bench
[ -n "${REPORT_ONLY:-}" ] || : > target/bench/caption-amad.jsonl
[ -n "${REPORT_ONLY:-}" ] || : > target/bench/caption-amad-half.jsonl
[ -n "${REPORT_ONLY:-}" ] || : > target/bench/caption-torch.jsonl
[ -n "${REPORT_ONLY:-}" ] && ROUNDS=0
for round in $(seq "${ROUNDS:-3}"); do
  echo "round $round"
  ./target/release/amad bench caption --json --model "$model" --beam "$beams" --max-tokens 15 "${images[@]}" | tee -a target/bench/caption-amad.jsonl
  ./target/release/amad bench caption --json --half-weights --model "$model" --beam "$beams" --max-tokens 15 "${images[@]}" | tee -a target/bench/caption-amad-half.jsonl
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python scripts/bench_caption_torch.py --model "$model" --beam "$beams" --max-tokens 15 "${images[@]}" 2>/dev/null | tee -a target/bench/caption-torch.jsonl
done
python3 - "$beams" <<'PY'
import json, statistics, sys, subprocess
beams = sys.argv[1]
sys.path.insert(0, "scripts")
from bench_jsonl import load  # noqa: E402
amad, amad_peak, _ = load("target/bench/caption-amad.jsonl", "image")
half, half_peak, _ = load("target/bench/caption-amad-half.jsonl", "image")
torch, torch_peak, _ = load("target/bench/caption-torch.jsonl", "image")
med = lambda rs, k: statistics.median(r[k] for r in rs)
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
versions = subprocess.run([".venv/bin/python", "-c", "import torch, transformers; print(f'transformers {transformers.__version__}, torch {torch.__version__}')"],
                          capture_output=True, text=True).stdout.strip()
adapter = next(iter(amad.values()))[0]["adapter"]
out = [f"# Caption latency: a full-size captioner, amad beside transformers", "",
       f"Written by `scripts/bench_caption.sh` (BEAMS={beams}): nlpconnect/vit-gpt2-image-captioning's shape "
       f"(ViT-B/16 + 12-layer GPT-2, 50257-token vocabulary) with random weights, at most 15 new tokens, "
       f"{len(amad[next(iter(amad))])} rounds alternating amad, amad with `--half-weights` and transformers; medians "
       f"of each image's best-of-3 per round. CPU: {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores. "
       f"amad on {adapter}; {versions}, eager, on the same CPU. Each cell: amad in f32 / amad with half-precision "
       f"weights (its linear maps' weights and token embedding rounded to f16: a different model's numbers) / transformers in f32.", "",
       "| image | tokens | encoder ms | decoder ms/token | total ms |",
       "|---|---|---|---|---|"]
for img in amad:
    a, h, t = amad[img], half[img], torch[img]
    cell = lambda k, f: " / ".join(format(med(x, k), f) for x in (a, h, t))
    out.append(f"| {img} | {a[0]['tokens']} / {h[0]['tokens']} / {t[0]['tokens']} | {cell('encoder_ms', '.0f')} | "
               f"{cell('decoder_ms_per_token', '.1f')} | {cell('total_ms', '.0f')} |")
out += ["", f"Peak resident memory: amad {max(amad_peak)/1e6:.0f} MB, with half-precision weights {max(half_peak)/1e6:.0f} MB "
        f"(on a CPU adapter the device's buffers count here), transformers {max(torch_peak)/1e6:.0f} MB."]
open("docs/benchmarks-caption.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
