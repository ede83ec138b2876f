#!/usr/bin/env bash
# Every figure the open speed work needs from a real GPU, in one run on a lent device machine,
# each beside PyTorch on the same GPU:
#   1. scripts/bench_gpu.sh: matmul beside cuBLAS fp32 (TF32 off), the bundled steps beside eager;
#      its `_shared` rows are the workgroup-memory matmul (AMAD_SHARED_MATMUL=1) beside the vec4 one
#   2. the full-size distillation step (amad bench distill) beside scripts/bench_distill_torch.py,
#      with the vec4 matmul and with the workgroup-memory one (lines tagged "shared")
#   3. caption latency, greedy and 4 beams (amad bench caption) beside scripts/bench_caption_torch.py,
#      and greedy with --half-weights (lines tagged "half_weights")
#   4. amad_torch.distill on one GPU: seconds per step at global batch 16 (docs/scale.md), alone and
#      under torchrun, whose process group is NCCL on a GPU
# The full-size model is nlpconnect/vit-gpt2-image-captioning's shape with random weights
# (scripts/make_random_hub_model.py). Each part has a time limit (together about 10 minutes at
# most; far less where nothing hangs) and a failure does not stop the others; PARTS picks some
# ("gpu hub scale", the default, is all). Everything goes to OUTDIR, 7 files at most (the device
# tool returns 8).
#
# The device machine has python3 with torch and transformers but no Rust and no network, so build
# here and carry the binary and Vulkan's loader (.gl, see the device tool's notes):
#   cargo build --release      # then run, on the device, carrying target/release/amad and .gl:
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; scripts/device_check.sh "$OUT"
# Here, a dry run on the CPU (MODEL=tests/fixtures/hub_tiny for a small one):
#   PYTHON=.venv/bin/python DEVICE=cpu scripts/device_check.sh target/dry
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/device_check.sh OUTDIR}"
mkdir -p "$out"
py="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
amad=./target/release/amad
model="${MODEL:-target/bench/nlpconnect-random}"
photos=(tests/fixtures/photos/astronaut.png tests/fixtures/photos/coffee.png tests/fixtures/photos/chelsea.png)
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
log="$out/device.log"
# part NAME SECONDS COMMAND...: runs it under a time limit, its output to the log.
part() {
  local name="$1" limit="$2"
  shift 2
  echo "== $name ($(date +%T), limit ${limit}s)" | tee -a "$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  echo "== $name: exit $?" | tee -a "$log"
}
{ nvidia-smi -L; "$amad" bench kernels --help >/dev/null && "$amad" --version; "$py" -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"; } >>"$log" 2>&1
parts="${PARTS:-gpu hub scale}"
wants() { [[ " $parts " == *" $1 "* ]]; }
if wants hub || wants scale; then
  [ -f "$model/model.safetensors" ] || part model 60 "$py" scripts/make_random_hub_model.py --out "$model"
fi

if wants gpu; then
  part bench_gpu 150 scripts/bench_gpu.sh "$out/gpu"
  cp "$out/gpu/benchmarks-gpu.md" "$out/gpu/amad.jsonl" "$out/gpu/reference.jsonl" "$out/" 2>/dev/null
  rm -rf "$out/gpu"
fi

if wants hub; then
  : >"$out/hub.jsonl"
  part distill_amad 60 sh -c "$amad bench distill --json --teacher $model >>$out/hub.jsonl"
  part distill_amad_shared 60 sh -c "AMAD_SHARED_MATMUL=1 $amad bench distill --json --teacher $model | sed 's/^{/{\"shared\":true,/' >>$out/hub.jsonl"
  part distill_torch 60 sh -c "$py scripts/bench_distill_torch.py --teacher $model --device $device >>$out/hub.jsonl"
  for beams in 1 4; do
    part "caption_amad_beams$beams" 40 sh -c "$amad bench caption --json --model $model --beam $beams --max-tokens 15 ${photos[*]} >>$out/hub.jsonl"
    part "caption_torch_beams$beams" 40 sh -c "$py scripts/bench_caption_torch.py --model $model --device $device --beam $beams --max-tokens 15 ${photos[*]} >>$out/hub.jsonl"
  done
  part caption_amad_half 30 sh -c "$amad bench caption --json --half-weights --model $model --max-tokens 15 ${photos[*]} | sed 's/^{/{\"half_weights\":true,/' >>$out/hub.jsonl"
fi

if wants scale; then
  runs=$(mktemp -d)
  mkdir -p "$runs/photos" && cp "${photos[@]}" "$runs/photos/"
  part scale_alone 60 env PYTHONPATH=python "$py" -m amad_torch.distill --teacher "$model" --images "$runs/photos" \
    --out "$runs/alone" --batch 16 --steps 5 --checkpoint-every 5
  part scale_torchrun 60 env PYTHONPATH=python "$py" -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m amad_torch.distill --teacher "$model" --images "$runs/photos" --out "$runs/torchrun" --batch 16 --steps 3 \
    --checkpoint-every 3
  for r in alone torchrun; do
    [ -f "$runs/$r/metrics.jsonl" ] && sed "s/^/$r /" "$runs/$r/metrics.jsonl"
  done >"$out/scale.log"
  rm -rf "$runs"
fi
ls -l "$out"
