"""Compile the MMA kernels for a CUDA target without a GPU (Triton frontend -> TTGIR -> LLVM -> PTX -> cubin).

Catches type and lowering errors the interpreter cannot see. Run without TRITON_INTERPRET:
    python tests/tools/compile_kernels.py [--arch 90] [--all]
"""
import argparse
import itertools
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mma_kernels.ops import triton_kernels as tk  # noqa: E402

KERNELS = (tk.mma_fwd_kernel, tk.mma_bwd_dq_kernel, tk.mma_bwd_dkdv_kernel)
TENSORS = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}
FP32_PTRS = {"LSE", "LSE2", "DELTA", "MROW", "LINV"}
INT_PTRS = {"META", "PADCUM", "WIN"}
FLOATS = {"qk_scale", "sm_scale"}


def signature(fn, dtype, consts):
    kinds = {}
    for name in fn.arg_names:
        if name in consts:
            kinds[name] = "constexpr"
        elif name in TENSORS:
            kinds[name] = "*" + dtype
        elif name in FP32_PTRS:
            kinds[name] = "*fp32"
        elif name in INT_PTRS:
            kinds[name] = "*i32"
        else:
            kinds[name] = "fp32" if name in FLOATS else "i32"
    return kinds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--all", action="store_true", help="every dtype x tile x head-dim block (slow: fp32 takes minutes)")
    a = ap.parse_args()
    if a.all:
        variants = list(itertools.product(["fp16", "bf16", "fp32"], [(128, 64, 8, 3), (64, 64, 4, 2)], [64, 128]))
    else:  # the headline shapes: bf16 head dim 128 at the forward's widest tile, head dim 96 (-> 128) narrower
        variants = [("bf16", (128, 64, 8, 3), 128), ("fp16", (64, 64, 4, 2), 128)]
    # groups and a sliding window on for every other variant (the fp16 one by default), off for the rest
    features = {v: i % 2 == 1 for i, v in enumerate(variants)}
    target = GPUTarget("cuda", a.arch, 32)
    n = 0
    for fn in KERNELS:
        for dtype, (bm, bn, warps, stages), bd in variants:
            on = features[(dtype, (bm, bn, warps, stages), bd)]
            consts = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, DOT_PREC="ieee" if dtype == "fp32" else "tf32", UPCAST=False,
                          HAS_GROUPS=on, HAS_WINDOW=on, SPLIT_STATS=dtype == "fp32", EXACT_DELTA=dtype == "fp32")
            t = time.time()
            k = triton.compile(ASTSource(fn, signature(fn, dtype, consts), consts), target=target,
                               options=dict(num_warps=warps, num_stages=stages))
            assert k.asm.get("cubin"), f"no cubin for {fn.__name__}"
            n += 1
            print(f"ok {fn.__name__} {dtype} BM={bm} BN={bn} BD={bd} groups+window={on} sm_{a.arch} "
                  f"{time.time() - t:.1f}s", flush=True)
    print(f"compiled {n} variants for sm_{a.arch}")


if __name__ == "__main__":
    sys.exit(main())
