"""`python -m benchmarks.sp_static_qpos`: the kernels' query-positions variant (HAS_QPOS) compiled for sm_90.

The context-parallel launch (`mma_attention_at`): 2048 query rows at a balanced plan's scattered positions of a
16K row (8 ranks), bf16, head dim 128, 32 query / 8 KV heads, at the headline tiles of `python -m
benchmarks.static`; no GPU needed. Reports registers, spills, wgmma counts and the loops, next to the default
path's. Writes benchmarks/results/sp/static_qpos_sm90.{json,md} with --save.
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "sp")
HEADLINE = {"fwd": (128, 64, 8, 3), "dq": (128, 64, 8, 2), "dkdv": (32, 128, 8, 2)}


def capture_qpos(seqlen=16384, world=8, head_dim=128, heads_q=32, heads_kv=8):
    import torch

    from mma_kernels import MMAMask
    from mma_kernels.distributed import shard_plan
    from mma_kernels.ops import triton_ops

    from .static.capture import Launch, _Capture

    mod = torch.zeros(1, seqlen, dtype=torch.int32)
    mod[:, seqlen // 8: seqlen // 8 + 576] = 1
    mask = MMAMask(mod, torch.zeros_like(mod))
    pos = shard_plan(mask, world, method="zigzag").positions(0)
    mk = lambda h, n: torch.empty(1, h, n, head_dim, device="meta", dtype=torch.bfloat16,  # noqa: E731
                                  requires_grad=True)
    q, k, v = mk(heads_q, len(pos)), mk(heads_kv, seqlen), mk(heads_kv, seqlen)
    sink = []
    saved = dict(triton_ops._tuned)
    try:
        for kind in saved:
            triton_ops._tuned[kind] = _Capture(kind, sink)
        out, _ = triton_ops.TritonMMAttention.apply(q, k, v, mask, head_dim ** -0.5, None, None, pos)
        torch.autograd.grad(out, (q, k, v), torch.empty_like(out))
    finally:
        triton_ops._tuned.update(saved)
    assert all(ln.meta.get("HAS_QPOS") for ln in sink)
    return {ln.kind: ln for ln in sink}, Launch


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("compiles for a GPU: unset TRITON_INTERPRET")
    from .static.__main__ import compile_variant, mask_functions
    from .static.sass import function_lines

    lines = function_lines(*mask_functions())
    launches, _ = capture_qpos()
    recs = []
    for kind, key in HEADLINE.items():
        r = compile_variant(kind, "bf16", 128, launches[kind], key, True, 90, lines)
        r["variant"] = "HAS_QPOS"
        recs.append(r)
        print(json.dumps({k: r.get(k) for k in ("kernel", "regs", "spill_bytes", "hgmma", "hmma", "error")}),
              file=sys.stderr, flush=True)
    md = ["# HAS_QPOS kernels compiled for sm_90 (no GPU)\n",
          f"`python -m benchmarks.sp_static_qpos {' '.join(argv)}` ({time.strftime('%Y-%m-%d')}): bf16, D=128, "
          "Hq 32 / Hkv 8, 2048 query rows at a zigzag shard's positions of a 16K row.\n",
          "| kernel | tile | regs | spill bytes | HGMMA | HMMA | loops (instructions) |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in recs:
        loops = ", ".join(f"{lp['kind']} {lp['instructions']}" for lp in r.get("loops", []))
        md.append(f"| {r['kernel']} | {r['block_m']}x{r['block_n']} w{r['num_warps']} s{r['num_stages']} | "
                  f"{r.get('regs')} | {r.get('spill_bytes')} | {r.get('hgmma')} | {r.get('hmma')} | "
                  f"{r.get('error') or loops} |")
    text = "\n".join(md) + "\n"
    print(text)
    if "--save" in argv:
        from .records import save_json_md

        save_json_md(RESULTS, "static_qpos_sm90", recs, text)
    return 1 if any("error" in r for r in recs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
