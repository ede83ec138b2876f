"""Writes docs/benchmarks.md from one run of scripts/bench_kernels.sh (amad's and numpy's JSON lines)."""
import datetime
import json
import platform
import subprocess
import sys

amad = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
numpy = {r["name"]: r for r in (json.loads(l) for l in open(sys.argv[2]) if l.strip())}
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()

out = [
    "# Benchmarks",
    "",
    "Figures from one run of `scripts/bench_kernels.sh` (which runs `amad bench kernels --json` and",
    "`scripts/bench_numpy.py` back to back on the same machine), written by `scripts/bench_report.py`.",
    "Benchmarks print figures; no test is timed. Re-run to refresh.",
    "",
    f"- date: {datetime.date.today()}",
    f"- machine: {cpu}, {cores} cores ({platform.system()})",
    f"- amad adapter: {amad[0]['adapter']}",
    f"- numpy: {next(iter(numpy.values()))['adapter'] if numpy else 'not run'}",
    "",
    "| kernel | shape | amad ms | amad GFLOP/s | numpy ms | numpy GFLOP/s |",
    "|---|---|---:|---:|---:|---:|",
]
for r in amad:
    n = numpy.get(r["name"])
    gf = f"{r['gflops']:.2f}" if r.get("gflops") is not None else ""
    ncols = f"{n['ms']:.3f} | {n['gflops']:.2f}" if n else "— | —"
    out.append(f"| {r['name']} | {r['shape']} | {r['ms']:.3f} | {gf} | {ncols} |")
out += [
    "",
    "Shapes: `matmul*` is the 512³ probe (`_at`: A transposed, `_bt`: B transposed). `teacher_*` are the",
    "teacher's linear layers at batch 32 × 65 image tokens × 128 wide: forward X·W, and the backward",
    "products dX = dY·Wᵀ and dW = Xᵀ·dY. `attention_*` is the attention core (B 32, H 8, T 65, head",
    "width 16); its GFLOP/s counts the two (forward) or six (forward + backward) matmuls only.",
    "",
]
open("docs/benchmarks.md", "w").write("\n".join(out))
print("\n".join(out))
