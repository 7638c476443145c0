"""How much does one projection over n rows cost, per matrix-multiply path? (verification's inner loop)

For Qwen2.5-Coder-1.5B's shapes (8960x1536, 1536x8960, 1536x1536), n = 1..16 rows, float32 and
bfloat16 weights, times each candidate path (median of `--repeat`) and prints ms and the ratio to
n = 1. Candidates: F.linear; W @ x.T; oneDNN (mkldnn) prepacked linear; MKL packed sgemm.

    python benchmarks/linear_kernels.py --repeat 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(8960, 1536), (1536, 8960), (1536, 1536)]
NS = [1, 2, 4, 8, 16]


def timeit(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def candidates(w: torch.Tensor) -> dict:
    out = {
        "F.linear": lambda x: F.linear(x, w),
        "W @ x.T": lambda x: (w @ x.T).T,
    }
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        out["mkldnn prepacked"] = lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except Exception as err:  # not built with oneDNN, or the op changed
        print(f"mkldnn prepacked unavailable: {err}")
    if w.dtype == torch.float32 and torch._C.has_mkl:
        packs = {n: torch.ops.mkl._mkl_reorder_linear_weight(w, n) for n in NS}
        out["mkl packed"] = lambda x: torch.ops.mkl._mkl_linear(x, packs[x.shape[0]], w, None, x.shape[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for dtype in (torch.float32, torch.bfloat16):
        for out_f, in_f in SHAPES:
            w = torch.randn(out_f, in_f).to(dtype)
            print(f"\n{dtype} W {out_f}x{in_f}: ms for n rows (ratio to n=1)")
            ref = {n: F.linear(torch.randn(n, in_f).to(dtype), w) for n in NS}
            for name, fn in candidates(w).items():
                cells, base = [], None
                for n in NS:
                    x = torch.randn(n, in_f, generator=torch.Generator().manual_seed(n)).to(dtype)
                    ms = timeit(lambda fn=fn, x=x: fn(x), args.repeat)
                    base = base or ms
                    cells.append(f"n={n}: {ms:6.2f} ({ms / base:4.2f})")
                    assert fn(x).shape == ref[n].shape
                print(f"  {name:18s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
