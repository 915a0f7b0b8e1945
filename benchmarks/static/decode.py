"""`python -m benchmarks.static.decode --arch 90 [--save]`: the decode path's launch and machine code, no GPU.

Also compiles the decode kernel at other launches (`VARIANTS`: row packings of 16/32/64, fp32, head dims 80..256,
groups and a window) at the tile the launcher picks for them, for registers and spills.

One decoding step of a long conversation (default B=1, Hq=32, Hkv=8, D=128, Lk=128K, one query row, bf16):
the launches of the prefill forward (``decode_ops.DECODE = "off"``, what decoding ran before) and of the decode
path (split-KV kernel + merge), captured from the runtime's own launchers on ``meta`` tensors as
`benchmarks.static` does (same arguments, same specialisation), then compiled for sm_<arch>. Reports per kernel:
grid and programs launched, K/V bytes each program reads (max and min over programs) and their sum against the
cache's size, registers, spill bytes, shared memory, HGMMA / HMMA / cp.async counts.

The bytes are counted from the kernels' own block ranges: `benchmarks.tiles.query_side_ranges` and
`lookahead_split` (replicas of `_key_block_ranges` and `_lookahead_split`, checked against the kernels by
tests/test_tiles_suite.py) and the decode kernel's split arithmetic (`mma_decode_kernel`), on the same mask
the launch was captured with (text, a 576-token image with look-ahead, text: the new row is text). A key block
counts its keys inside [0, Lk) (loads past Lk are masked off), K and V each ``D * element size`` bytes per key.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Dict, List

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402

from .__main__ import RESULTS, header, mask_functions  # noqa: E402

LAUNCH = dict(batch=1, heads_q=32, heads_kv=8, head_dim=128, seqlen=128 * 1024, q_len=1, dtype="bf16")


class _Capture:
    def __init__(self, kind, sink):
        self.kind, self.sink = kind, sink

    def __getitem__(self, grid):
        grid = None if callable(grid) else tuple(grid)  # the autotuned forward's grid is a function of its config
        return lambda *args, **meta: self.sink.append(dict(kind=self.kind, grid=grid, args=args, meta=meta))


def _mask(batch: int, seqlen: int, groups: bool = False):
    from mma_kernels import MMAMask

    mod = torch.zeros(batch, seqlen, dtype=torch.int32)
    mod[:, seqlen // 8: seqlen // 8 + 576] = 1
    kw = dict(group_ids=torch.zeros_like(mod)) if groups else {}
    return MMAMask(mod, torch.zeros_like(mod), **kw)


def capture(decode: bool, batch, heads_q, heads_kv, head_dim, seqlen, q_len, dtype, groups=False,
            window=None) -> List[Dict]:
    """The launches of one forward (no grad), with the decode path on or off (optionally with a second mutual
    level and a sliding window: the kernels' optional paths)."""
    from benchmarks.static.capture import DTYPES
    from mma_kernels.ops import decode_ops, triton_ops

    dt = DTYPES[dtype]
    q = torch.empty(batch, heads_q, q_len, head_dim, device="meta", dtype=dt)
    k, v = (torch.empty(batch, heads_kv, seqlen, head_dim, device="meta", dtype=dt) for _ in range(2))
    mask = _mask(batch, seqlen, groups)
    extra = (mask.window_fields(window), window) if window else ()
    sink: List[Dict] = []
    saved = dict(triton_ops._tuned), dict(decode_ops._kernels), decode_ops.DECODE
    try:
        for kind in saved[0]:
            triton_ops._tuned[kind] = _Capture(kind, sink)
        for kind in saved[1]:
            decode_ops._kernels[kind] = _Capture(kind, sink)
        decode_ops.DECODE = "auto" if decode else "off"
        with torch.no_grad():
            triton_ops.TritonMMAttention.apply(q, k, v, mask, head_dim ** -0.5, *extra)
    finally:
        triton_ops._tuned.update(saved[0])
        decode_ops._kernels.update(saved[1])
        decode_ops.DECODE = saved[2]
    for s in sink:
        s["mask"] = mask
    return sink


def kv_bytes(mask, Lq: int, BM: int, BN: int, splits: int, D: int, elt: int) -> List[int]:
    """K/V bytes read by each program of one (batch row, KV head or query head) along the splits, from the
    kernels' block ranges (query rows reduced as `_key_block_ranges` does for a row block of BM rows)."""
    from benchmarks.tiles import lookahead_split, query_side_ranges

    Lk = mask.seq_len
    n_lo, f_lo, f_hi, c_hi, a_lo, n_hi = (int(t[0, 0]) for t in
                                          lookahead_split(mask, Lq, BM, BN, query_side_ranges(mask, Lq, BM, BN)))

    def keys(b0, b1):
        return max(0, min(b1 * BN, Lk) - b0 * BN) if b1 > b0 else 0

    w_c = c_hi - n_lo
    work = w_c + (n_hi - a_lo)
    out = []
    for s in range(splits):
        v0, v1 = s * work // splits, (s + 1) * work // splits
        n = keys(n_lo + min(v0, w_c), n_lo + min(v1, w_c)) + keys(a_lo + max(v0 - w_c, 0), a_lo + max(v1 - w_c, 0))
        out.append(2 * n * D * elt)  # K and V
    return out


def _compile(fn, launch, arch, warps, stages, extra=None):
    from benchmarks.static.capture import target_driver

    fn.device_caches.clear()
    meta = dict(launch["meta"])
    meta.update(extra or {})
    meta.setdefault("num_warps", warps)
    meta.setdefault("num_stages", stages)
    with warnings.catch_warnings(), target_driver(arch):
        warnings.simplefilter("ignore")
        return fn.warmup(*launch["args"], grid=(1,), **meta), meta


def analyse_launch(name, path, fn, launch, arch, mask_lines, programs, per_program, cache_bytes, tile,
                   warps, stages, extra=None) -> Dict:
    from benchmarks.static.sass import analyse

    t = time.time()
    ck, meta = _compile(fn, launch, arch, warps, stages, extra)
    rec = dict(kernel=name, path=path, arch=f"sm_{arch}", grid=list(launch["grid"]) if launch["grid"] else None,
               programs=programs, tile=tile, num_warps=meta["num_warps"], num_stages=meta["num_stages"],
               kv_bytes_per_program_max=max(per_program) if per_program else 0,
               kv_bytes_per_program_min=min(per_program) if per_program else 0,
               kv_bytes_total=sum(per_program) * (programs // max(1, len(per_program))) if per_program else 0,
               cache_bytes=cache_bytes, compile_s=None)
    rec.update(analyse(ck.asm["cubin"], arch, meta["num_warps"], int(ck.metadata.shared), mask_lines))
    rec["compile_s"] = round(time.time() - t, 1)
    rec["kv_reads_over_cache"] = round(rec["kv_bytes_total"] / cache_bytes, 3) if per_program else None
    rec.pop("loops", None)
    return rec


def run(arch: int, launch=LAUNCH, before: bool = True) -> List[Dict]:
    from benchmarks.static.capture import DTYPES
    from mma_kernels.ops import decode_kernels as dk
    from mma_kernels.ops import decode_ops, triton_ops
    from mma_kernels.ops import triton_kernels as tk

    B, Hq, Hkv, D, Lk, Lq = (launch[x] for x in ("batch", "heads_q", "heads_kv", "head_dim", "seqlen", "q_len"))
    elt = torch.empty(0, dtype=DTYPES[launch["dtype"]]).element_size()
    cache = 2 * B * Hkv * Lk * D * elt
    mask_lines = __import__("benchmarks.static.sass", fromlist=["function_lines"]).function_lines(*mask_functions())
    recs = []
    # before: the prefill forward with one query row, at each config of its autotune list
    (fwd,) = [s for s in capture(False, B, Hq, Hkv, D, Lk, Lq, launch["dtype"]) if s["kind"] == "fwd"]
    named = dict(zip(tk.mma_fwd_kernel.arg_names, fwd["args"]), **fwd["meta"])
    kept = triton_ops._prune("fwd", triton_ops._configs("fwd"), named) if before else []  # as the autotuner prunes
    for bm, bn, w, s in [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept]:
        programs = -(-Lq // bm) * B * Hq
        per = kv_bytes(fwd["mask"], Lq, bm, bn, 1, D, elt)
        recs.append(analyse_launch("mma_fwd_kernel", "before: prefill forward, Lq=1", tk.mma_fwd_kernel,
                                   dict(fwd, grid=(-(-Lq // bm), B * Hq)), arch, mask_lines, programs, per, cache,
                                   f"{bm}x{bn}", w, s, dict(BLOCK_M=bm, BLOCK_N=bn)))
    # after: the decode kernel and the merge, as the launcher plans them
    after = {s["kind"]: s for s in capture(True, B, Hq, Hkv, D, Lk, Lq, launch["dtype"])}
    p = decode_ops.plan(B, Hq, Hkv, Lq, Lk, D, torch.device("meta"))
    per = kv_bytes(after["decode"]["mask"], Lq, dk.MAX_ROWS, p.block_n, p.splits, D, elt)
    recs.append(analyse_launch("mma_decode_kernel", f"after: decode, {p.splits} splits x {B * Hkv * p.chunks} "
                               f"(batch, KV head{', chunk' if p.chunks > 1 else ''}), {p.heads} query heads x {Lq} "
                               f"rows per tile", dk.mma_decode_kernel, after["decode"], arch, mask_lines,
                               p.programs(B, Hkv), per, cache, f"{p.block_m}x{p.block_n}", p.num_warps, p.num_stages))
    recs[-1]["partial_bytes"] = 4 * B * Hq * Lq * p.splits * (D + 2) if p.splits > 1 else 0  # written, read once
    if "merge" in after:
        recs.append(analyse_launch("mma_decode_merge_kernel", "after: merge of the splits (one program per row)",
                                   dk.mma_decode_merge_kernel, after["merge"], arch, mask_lines,
                                   after["merge"]["grid"][0], [], cache, f"{p.splits} splits x {D}", 4, 1))
    return recs


# other decode launches (dtype, B, Hq, Hkv, D, Lk, Lq, groups, window): every packing of the tile's rows (16, 32,
# 64), fp32, head dims 80 / 96 / 256, the optional paths; compiled at the plan's own tile (`decode_ops._gpu_tile`)
VARIANTS = [("bf16", 1, 32, 8, 128, 8192, 1, False, None), ("fp16", 1, 32, 32, 96, 8192, 1, False, None),
            ("bf16", 1, 32, 1, 128, 8192, 1, False, None), ("bf16", 1, 32, 8, 128, 8192, 16, False, None),
            ("bf16", 1, 16, 2, 96, 8192, 7, False, None), ("fp16", 2, 28, 4, 80, 8192, 4, True, 1024),
            ("fp32", 1, 32, 8, 64, 8192, 1, False, None), ("fp32", 1, 32, 4, 128, 8192, 16, False, None),
            ("fp32", 1, 16, 2, 256, 8192, 4, False, None), ("fp16", 1, 8, 8, 256, 8192, 2, False, None),
            ("fp16", 1, 32, 4, 256, 8192, 8, False, None), ("bf16", 1, 32, 8, 128, 8192, 8, True, 1024),
            ("bf16", 1, 32, 8, 128, 8192, 16, True, 1024)]


def run_variants(arch: int) -> List[Dict]:
    from benchmarks.static.sass import analyse, function_lines
    from mma_kernels.ops import decode_kernels as dk

    mask_lines = function_lines(*mask_functions())
    out = []
    for dtype, B, Hq, Hkv, D, Lk, Lq, groups, window in VARIANTS:
        (launch,) = [s for s in capture(True, B, Hq, Hkv, D, Lk, Lq, dtype, groups, window) if s["kind"] == "decode"]
        ck, meta = _compile(dk.mma_decode_kernel, launch, arch, 4, 1)
        r = analyse(ck.asm["cubin"], arch, meta["num_warps"], int(ck.metadata.shared), mask_lines)
        out.append(dict(dtype=dtype, batch=B, heads_q=Hq, heads_kv=Hkv, head_dim=D, seqlen=Lk, q_len=Lq,
                        groups=groups, window=window, block_m=meta["BLOCK_M"], block_n=meta["BLOCK_N"],
                        num_warps=meta["num_warps"], num_stages=meta["num_stages"], splits=meta["NUM_SPLITS"],
                        programs=launch["grid"][0] * launch["grid"][1], regs=r["regs"], spill_bytes=r["spill_bytes"],
                        smem_bytes=r["smem_bytes"], ctas_per_sm=r["ctas_per_sm"], hgmma=r["hgmma"], hmma=r["hmma"],
                        async_copy=r["async_copy"]))
        print(f"variant {out[-1]}", file=sys.stderr, flush=True)
    return out


def variants_markdown(recs: List[Dict]) -> str:
    lines = ["", "## Other decode launches (the plan's own tile, sm_90)", "",
             "| dtype | B | Hq/Hkv | D | Lk | Lq | groups, window | tile (rows x keys) | warps/stages | splits "
             "| programs | regs | spill B | smem KB | CTAs/SM | HGMMA | HMMA | cp.async |", "|" + "---|" * 18]
    for r in recs:
        lines.append(f"| {r['dtype']} | {r['batch']} | {r['heads_q']}/{r['heads_kv']} | {r['head_dim']} | "
                     f"{r['seqlen']} | {r['q_len']} | {'groups' if r['groups'] else '-'}, {r['window'] or '-'} | "
                     f"{r['block_m']}x{r['block_n']} | {r['num_warps']}/{r['num_stages']} | {r['splits']} | "
                     f"{r['programs']} | {r['regs']} | {r['spill_bytes']} | {r['smem_bytes'] / 1024:.0f} | "
                     f"{r['ctas_per_sm']} | {r['hgmma']} | {r['hmma']} | {r['async_copy']} |")
    return "\n".join(lines) + "\n"


def _mib(x):
    return f"{x / 2**20:.2f}" if x else "0"


def markdown(recs: List[Dict], head: Dict, launch=LAUNCH) -> str:
    lines = [f"# Decode step, static report ({head['arch']})", "",
             f"triton {head['triton']}, torch {head['torch']}, commit `{head['git_commit']}`, {head['date']}. "
             f"Command: `{head['command']}`.", "",
             f"One decoding step: B={launch['batch']}, Hq={launch['heads_q']}, Hkv={launch['heads_kv']}, "
             f"D={launch['head_dim']}, Lk={launch['seqlen']}, Lq={launch['q_len']}, {launch['dtype']}; the K/V cache "
             f"is {_mib(recs[0]['cache_bytes'])} MiB. Launches captured from the runtime's launchers, compiled "
             "with their specialisation; K/V bytes from the kernels' block ranges (see the module docstring). "
             "No GPU ran: these are compile-time facts and counts, not timings.", "",
             "| kernel | path | tile | warps/stages | programs | K/V MiB per program (max / min) | K/V MiB total "
             "| x cache | regs | spill B | smem KB | HGMMA | HMMA | cp.async |",
             "|" + "---|" * 14]
    for r in recs:
        lines.append(
            f"| {r['kernel']} | {r['path']} | {r['tile']} | {r['num_warps']}/{r['num_stages']} | {r['programs']} | "
            f"{_mib(r['kv_bytes_per_program_max'])} / {_mib(r['kv_bytes_per_program_min'])} | "
            f"{_mib(r['kv_bytes_total'])} | {'-' if r['kv_reads_over_cache'] is None else r['kv_reads_over_cache']} | "
            f"{r['regs']} | {r['spill_bytes']} | {r['smem_bytes'] / 1024:.0f} | {r['hgmma']} | {r['hmma']} | "
            f"{r['async_copy']} |")
    part = [r for r in recs if r.get("partial_bytes")]
    if part:
        lines += ["", f"The splits' fp32 partials (accumulator, row max, row sum) add {_mib(part[0]['partial_bytes'])} "
                  "MiB written by the decode kernel and read once by the merge."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.static.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, choices=(80, 90), default=90)
    p.add_argument("--save", action="store_true", help="write benchmarks/results/static/decode_sm<arch>.{json,md}")
    p.add_argument("--json", help="JSON output path")
    p.add_argument("--no-variants", action="store_true", help="only the headline step, not the other launches")
    p.add_argument("--no-before", action="store_true", help="not the prefill forward's launches (what ran before)")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("python -m benchmarks.static.decode compiles for a GPU: unset TRITON_INTERPRET")
    recs = run(a.arch, before=not a.no_before)
    more = [] if a.no_variants else run_variants(a.arch)
    head = dict(header(a.arch, argv), command="python -m benchmarks.static.decode " + " ".join(argv), launch=LAUNCH)
    md = markdown(recs, head) + (variants_markdown(more) if more else "")
    js = a.json or (os.path.join(RESULTS, f"decode_sm{a.arch}.json") if a.save else None)
    if js:
        os.makedirs(os.path.dirname(os.path.abspath(js)), exist_ok=True)
        with open(js, "w", encoding="utf-8") as f:
            json.dump(dict(header=head, records=recs, variants=more), f, indent=1)
        with open(os.path.splitext(js)[0] + ".md", "w", encoding="utf-8") as f:
            f.write(md)
        print(f"wrote {js} and its .md", file=sys.stderr)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
