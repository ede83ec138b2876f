"""numpy/OpenBLAS matmul GFLOP/s at the shapes `amad bench kernels` measures, printed as the same
JSON lines, so docs/benchmarks.md can set them side by side from one run (scripts/bench.sh).
With --torch-cuda the same products run in PyTorch on the GPU instead (cuBLAS, plain fp32: TF32 off),
for scripts/bench_gpu.sh.
"""
import json
import sys
import time

import numpy as np

try:
    from threadpoolctl import threadpool_info
    BLAS = "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} threads={i.get('num_threads')}" for i in threadpool_info())
except ImportError:
    BLAS = "unknown"

TOKENS = 32 * 65
CASES = [
    ("matmul", 512, 512, 512, False, False),
    ("matmul_at", 512, 512, 512, True, False),
    ("matmul_bt", 512, 512, 512, False, True),
    ("teacher_qkv_fwd", TOKENS, 384, 128, False, False),
    ("teacher_mlp_up_fwd", TOKENS, 512, 128, False, False),
    ("teacher_mlp_down_fwd", TOKENS, 128, 512, False, False),
    ("teacher_mlp_up_dx", TOKENS, 128, 512, False, True),
    ("teacher_mlp_up_dw", 128, 512, TOKENS, True, False),
    ("vit_qkv_fwd", 16 * 197, 2304, 768, False, False),
    ("vit_mlp_down_fwd", 16 * 197, 768, 3072, False, False),
    ("matmul_2048", 2048, 2048, 2048, False, False),
    ("decode_qkv", 1, 2304, 768, False, False),
    ("decode_mlp_down", 1, 768, 3072, False, False),
    ("decode_lm_head_half", 1, 25129, 768, False, True),
]

CUDA = "--torch-cuda" in sys.argv[1:]
if CUDA:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    WHO, ITERS = f"pytorch {torch.__version__} cuBLAS fp32 on {torch.cuda.get_device_name()}", 100
    sync = torch.cuda.synchronize
else:
    WHO, ITERS = f"numpy {np.__version__} ({BLAS})", 10

    def sync():
        pass

rng = np.random.default_rng(0)
for name, m, n, k, ta, tb in CASES:
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    if CUDA:
        a, b = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    op_a = a.T if ta else a
    op_b = b.T if tb else b
    op_a @ op_b  # warm-up
    sync()
    t = time.perf_counter()
    for _ in range(ITERS):
        op_a @ op_b
    sync()
    s = (time.perf_counter() - t) / ITERS
    print(json.dumps({"name": name, "shape": f"{m}x{n}x{k}", "ms": round(s * 1e3, 4),
                      "gflops": round(2 * m * n * k / s / 1e9, 3), "adapter": WHO}))
