"""Writes docs/benchmarks.md from one run of scripts/bench.sh: amad's JSON lines and the reference
implementations' (numpy/OpenBLAS for kernels, PyTorch eager for steps), matched by name (and, for
steps, by shape). A benchmark measured in several rounds (bench.sh alternates amad and the
references, ROUNDS times) is reported by its median round, with the rounds' range for steps.
Usage: bench_report.py AMAD.jsonl REFERENCE.jsonl [OUT.md] (scripts/bench_gpu.sh writes its own
page)."""
import datetime
import json
import platform
import statistics
import subprocess
import sys


def medians(path):
    """The rows of a JSON-lines file, one per (name, shape) in first-seen order, each with the
    median of its rounds' ms (GFLOP/s from that) and the rounds' range."""
    groups = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            groups.setdefault((r["name"], r["shape"]), []).append(r)
    rows = []
    for rounds in groups.values():
        r = dict(rounds[0])
        ms = [x["ms"] for x in rounds]
        r["ms"] = statistics.median(ms)
        r["range"] = (min(ms), max(ms), len(ms))
        if r.get("gflops") is not None:
            r["gflops"] = statistics.median(x["gflops"] for x in rounds)
        rows.append(r)
    return rows


amad = medians(sys.argv[1])
refs = medians(sys.argv[2])
rounds = max(r["range"][2] for r in amad)
by_name = {(r["name"], r["shape"] if r.get("gflops") is None else None): r for r in refs}
target = sys.argv[3] if len(sys.argv) > 3 else "docs/benchmarks.md"
script = "scripts/bench_gpu.sh" if len(sys.argv) > 3 else "scripts/bench.sh"
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
sources = sorted({r["adapter"] for r in refs})

out = [
    "# Benchmarks on a GPU" if len(sys.argv) > 3 else "# Benchmarks",
    "",
    f"Figures from one run of `{script}`: `amad bench kernels --json` and `amad bench step --json`,",
    "each followed by its reference implementation on the same machine (matmul by",
    "`scripts/bench_numpy.py`, PyTorch eager by `scripts/bench_step_torch.py`); written by",
    "`scripts/bench_report.py`. Benchmarks print figures; no test is timed. Re-run to refresh.",
] + ([
    "",
    f"These machines are noisy (step times move by a fifth between runs), so the script alternates amad",
    f"and the references for {rounds} rounds; every figure is the median round, and a step's range of",
    "rounds follows it in brackets.",
] if rounds > 1 else []) + [
    "",
    f"- date: {datetime.date.today()}",
    f"- machine: {cpu}, {cores} cores ({platform.system()})",
    f"- amad adapter: {amad[0]['adapter']}",
] + [f"- reference: {s}" for s in sources] + [
    "",
    "## Kernels",
    "",
    "| kernel | shape | amad ms | amad GFLOP/s | reference ms | reference GFLOP/s |",
    "|---|---|---:|---:|---:|---:|",
]
steps = []
for r in amad:
    # `_images`, `_buffers`, `_held`, `_shared` and `_vec4` rows are the same work through the
    # image kernels without subgroups, the storage-buffer kernels, images held for generation,
    # and the workgroup-memory or vec4 matmul: same reference.
    name = r["name"]
    for suffix in ("_buffers", "_images", "_held", "_shared", "_vec4"):
        name = name.removesuffix(suffix)
    ref = by_name.get((name, r["shape"] if r.get("gflops") is None else None))
    if r.get("gflops") is None:
        steps.append((r, ref))
        continue
    rc = f"{ref['ms']:.3f} | {ref['gflops']:.2f}" if ref else "— | —"
    out.append(f"| {r['name']} | {r['shape']} | {r['ms']:.3f} | {r['gflops']:.2f} | {rc} |")
out += [
    "",
    "`matmul*` is the 512³ probe (`_at`: A transposed, `_bt`: B transposed), and 2048³. `decode_*` are one",
    "generated token's products at GPT-2's full size (one row against Conv1D weights, half the tied LM",
    "head; `_held`: B read from the image generation keeps, `Gpu::hold_images`) and its cross-attention",
    "over 197 image tokens. `teacher_*` are the teacher's",
    "linear layers at batch 32 × 65 image tokens × 128 wide: forward X·W, and the backward products",
    "dX = dY·Wᵀ and dW = Xᵀ·dY. `attention_*` is the attention core (B 32, H 8, T 65, head width 16, Q, K",
    "and V side by side in one fused projection), `vit_attention_fwd` its forward at a ViT-B/16 encoder",
    "layer's size (B 4, H 12, T 197, head width 64); their GFLOP/s count the matmul-equivalent work (Q·Kᵀ",
    "and P·V forward; four more products backward).",
    "",
] + ([
    "On a CPU adapter amad copies the operands of matmuls, attention products and column sums into",
    "textures and reads them with texel fetches (ARCHITECTURE.md, \"image operands\"); a `_buffers` row is",
    "the same work through the storage-buffer kernels that GPUs use, timed in the same run, so the",
    "paths compare side by side.",
    "",
] if any(r["name"].endswith("_buffers") for r in amad) else []) + ([
    "Where the device has subgroups of 8 or more (lavapipe does), the matmul shares each texel among",
    "the 8 invocations of a subgroup (`matmul_subgroup`); an `_images` row is the same work through the",
    "image kernel without subgroups (`matmul_image`), timed in the same run.",
    "",
] if any(r["name"].endswith("_images") for r in amad) else []) + ([
    "On a device that reads storage buffers (GPUs), a `_shared` row is the same work through the matmul",
    "that stages each workgroup's tiles in workgroup memory (`matmul_shared`, opt-in with",
    "AMAD_SHARED_MATMUL=1), and a `_vec4` row, where that is on, the vec4 kernel; timed in the same run.",
    "",
] if any(r["name"].endswith(("_shared", "_vec4")) for r in amad) else []) + [
    "## Training steps",
    "",
    "| step | shape | amad ms | PyTorch eager ms | amad / PyTorch |",
    "|---|---|---:|---:|---:|",
]
def spread(r):
    lo, hi, n = r["range"]
    return f"{r['ms']:.1f} ({lo:.0f}–{hi:.0f})" if n > 1 else f"{r['ms']:.1f}"


for r, ref in steps:
    ratio = f"{r['ms'] / ref['ms']:.1f}×" if ref else "—"
    rc = spread(ref) if ref else "— (torch not installed)"
    out.append(f"| {r['name']} | {r['shape']} | {spread(r)} | {rc} | {ratio} |")
out += [
    "",
    "Default configs (src/model/config.rs): teacher ViT 4×128×8 heads + GPT-2 4×128×8 heads; student",
    "ViT 2×64×2 + GPT-2 2×64×2; 64×64 images in 8×8 patches; vocabulary 64, captions of 16 tokens.",
    "`teacher_train_step`: forward with attention maps, cross-entropy, backward, AdamW.",
    "`distill_step_amad_kl`: teacher forward, student forward and backward, CE + T²·KD + AMAD-KL over the",
    "encoder, decoder and cross attention of the paired layers, AdamW.",
    "",
]
open(target, "w").write("\n".join(out))
print("\n".join(out))
