"""numpy/OpenBLAS matmul GFLOP/s at the shapes `amad bench kernels` measures, printed as the same
JSON lines, so docs/benchmarks.md can set them side by side from one run (scripts/bench.sh).
"""
import json
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
]

rng = np.random.default_rng(0)
for name, m, n, k, ta, tb in CASES:
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    op_a = a.T if ta else a
    op_b = b.T if tb else b
    op_a @ op_b  # warm-up
    iters = 10
    t = time.perf_counter()
    for _ in range(iters):
        op_a @ op_b
    s = (time.perf_counter() - t) / iters
    print(json.dumps({"name": name, "shape": f"{m}x{n}x{k}", "ms": round(s * 1e3, 4),
                      "gflops": round(2 * m * n * k / s / 1e9, 3), "adapter": f"numpy {np.__version__} ({BLAS})"}))
