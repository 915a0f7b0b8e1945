"""What the CPU path costs: time and peak memory of `mma_attention` on CPU (chunked PyTorch path)
against the dense reference, forward + backward, each case in a fresh subprocess (peak RSS).

    python -m benchmarks.cpu_path_cost [--seqlens 2048,8192] [--heads 8] [--head-dim 64]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASE = r"""
import json, resource, sys, time, torch
from mma_kernels import MMAMask, mma_attention
from mma_kernels.reference import mma_attention_reference
impl, L, H, D = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
mod = torch.zeros(1, L, dtype=torch.long); mod[0, L // 8: L // 8 + 144 * max(1, L // 2048)] = 1
seg = torch.zeros(1, L, dtype=torch.long); seg[0, L // 2:] = 1
mask = MMAMask(mod, seg)
q, k, v = (torch.randn(1, H, L, D, requires_grad=True) for _ in range(3))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = mma_attention(q, k, v, mask, backend="torch") if impl == "mma_cpu" else mma_attention_reference(q, k, v, mask)
out.sum().backward()
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"impl": impl, "seqlen": L, "heads": H, "head_dim": D, "fwd_bwd_s": round(dt, 3),
                  "peak_extra_mib": round((peak - base) / 1024, 1)}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqlens", default="2048,8192")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    a = ap.parse_args(argv)
    for L in [int(x) for x in a.seqlens.split(",")]:
        for impl in ("mma_cpu", "dense_reference"):
            r = subprocess.run([sys.executable, "-c", CASE, impl, str(L), str(a.heads), str(a.head_dim)],
                               capture_output=True, text=True)
            print(r.stdout.strip() if r.returncode == 0 else json.dumps(
                {"impl": impl, "seqlen": L, "status": "error", "error": r.stderr.strip().splitlines()[-1:]}), flush=True)


if __name__ == "__main__":
    main()
