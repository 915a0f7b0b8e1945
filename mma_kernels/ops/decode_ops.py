"""Launcher of the decode path (`decode_kernels.py`): split-KV attention with GQA packing for ``Lq <= 16``.

`triton_ops.triton_forward` sends every forward with ``Lq <= MAX_ROWS`` query rows here (``DECODE = "auto"``),
so `mma_attention(backend="triton")`, the transformers integration's decode steps and the AKI model's
`generate` take it with no change. It returns what the prefill forward returns (out, lse and the fp32 row
statistics), so a backward through it runs the prefill's backward kernels (dQ, dK/dV) from those: decoding
does not train, but a gradient asked of a short query is still exact (tests/test_decode.py checks it).

Knobs (module attributes; tests set them):

- ``DECODE``: ``"auto"`` (default: the decode path for ``Lq <= MAX_ROWS``) or ``"off"`` (always the prefill
  kernel, as before);
- ``NUM_SPLITS``: ``None`` (default: `plan` picks it from B, Hkv, Lk and the SM count) or a fixed count;
- ``COUNTS``: a `collections.Counter` of launches, ``COUNTS["decode"]`` forwards through the decode kernel and
  ``COUNTS["merge"]`` merges of split results: tests assert the path was taken.

Split count: ``ceil(2 * SMs / (B * Hkv * chunks))`` programs per KV head (about two programs per SM), at
most one per ``MIN_SPLIT_BLOCKS`` key blocks (of the keys in reach: ``window + Lq`` under a sliding window)
and at most ``MAX_SPLITS``; 1 when the heads alone fill the GPU.
Without a GPU (the interpreter, static compilation) the SM count is fixed at ``NO_GPU_SMS`` (an H100's 132),
so the plan, and the results, are the same on every machine.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

import torch
import triton

from . import decode_kernels as dk
from . import triton_ops
from .triton_ops import LOG2E, _common, _fix_interpreter_index, _last_dim_contiguous, _mask_args, interpreting

MAX_ROWS = dk.MAX_ROWS
DECODE = "auto"
NUM_SPLITS = None
COUNTS: collections.Counter = collections.Counter()

# tile rows (query heads of a group x query rows) at most; a larger group is cut into chunks. Fewer for fp32
# (its dot runs on FMAs: 32+ rows spill) and head dims over 128 (32 rows spill), see `_gpu_tile`.
MAX_PACKED_ROWS = 64
MAX_PACKED_ROWS_FP32, MAX_PACKED_ROWS_WIDE = 16, 16
MAX_SPLITS = 64
MIN_SPLIT_BLOCKS = 4  # a split gets at least this many key blocks (of the plan's BLOCK_N)
NO_GPU_SMS = 132
INTERPRET_BLOCK_N = 16  # key tile under the interpreter (small: more block edges in tests)


@dataclass(frozen=True)
class Plan:
    heads: int  # query heads packed into one program's rows
    chunks: int  # programs per KV head along the group (ceil(GROUP / heads))
    block_m: int
    block_n: int
    splits: int
    num_warps: int
    num_stages: int
    sms: int

    def grid(self, B: int, Hkv: int):
        return (self.splits, B * Hkv * self.chunks)

    def programs(self, B: int, Hkv: int) -> int:
        return self.splits * B * Hkv * self.chunks


def use_decode(q: torch.Tensor) -> bool:
    """Whether `triton_forward` takes the decode path for this query."""
    if DECODE not in ("auto", "off"):
        raise ValueError(f"decode_ops.DECODE must be 'auto' or 'off', got {DECODE!r}")
    return DECODE == "auto" and 0 < q.shape[2] <= MAX_ROWS


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return NO_GPU_SMS


def _gpu_tile(block_m: int, block_d: int, dtype, general: bool = False) -> tuple:
    """(BLOCK_N, num_warps, num_stages) on a GPU, chosen spill-free on sm_90 for every packing of rows (16, 32,
    64) at head dims up to 128 in fp16/bf16 and fp32, and at head dim 256 in fp16/bf16 (`python -m
    benchmarks.static.decode`, its VARIANTS table; 4 warps spill at 32 or 64 rows, fp32 at wider key tiles or
    more rows, head dim 256 at 32 rows). fp32 at head dim 256 spills at every tile tried (1.1 KB). Since issue
    19's third round fp32 takes 16-key tiles at every head dim (32 keys spilled 40 B at head dim 64), and one
    variant spilled a little: fp16 head dim 80 at 32 rows x 64 keys with groups and a window (8 B,
    `benchmarks/results/static/perf/decode_sm90_with_fwd128x128.md`). `general` (groups or a window: every tile
    runs the kernel's general rule): 32-key tiles at 32 or 64 rows, spill-free in the VARIANTS table."""
    if dtype == torch.float32:  # 16 rows (MAX_PACKED_ROWS_FP32); above head dim 128 every tile tried spills
        return 16, 8, 3
    if block_d > 128:  # 16 rows (MAX_PACKED_ROWS_WIDE)
        return 32, 4, 2
    if general and block_m >= 32:
        return 32, 8, 3
    return (64, 8, 3) if block_m >= 32 else (64, 4, 3)


def plan(B: int, Hq: int, Hkv: int, Lq: int, Lk: int, D: int, device: torch.device, window=None,
         dtype=torch.bfloat16, general: bool = False) -> Plan:
    """Tile, packing and split count for one launch (host side, from shapes only; under a sliding window the
    keys a step sees are about ``window + Lq``, which bounds the useful splits: performance only, the kernel
    cuts whatever range the mask gives into the splits it gets). `general`: the launch has groups or a window
    (`_gpu_tile`)."""
    if not 0 < Lq <= MAX_ROWS:
        raise ValueError(f"decode path: Lq must be in 1..{MAX_ROWS}, got {Lq}")
    group = Hq // Hkv
    block_d = max(16, triton.next_power_of_2(D))
    rows = (MAX_PACKED_ROWS_FP32 if dtype == torch.float32 else MAX_PACKED_ROWS_WIDE if block_d > 128
            else MAX_PACKED_ROWS)
    heads = max(1, min(group, rows // Lq))
    chunks = -(-group // heads)
    block_m = max(16, triton.next_power_of_2(heads * Lq))
    if interpreting():
        block_n, warps, stages = INTERPRET_BLOCK_N, 4, 1
    else:
        block_n, warps, stages = _gpu_tile(block_m, block_d, dtype, general)
    sms = sm_count(device)
    if NUM_SPLITS is not None:
        if int(NUM_SPLITS) < 1:
            raise ValueError(f"decode_ops.NUM_SPLITS must be None or >= 1, got {NUM_SPLITS!r}")
        splits = int(NUM_SPLITS)
    else:
        base = max(1, B * Hkv * chunks)
        blocks = triton.cdiv(Lk if window is None else min(Lk, window + Lq), block_n)
        splits = max(1, min(triton.cdiv(2 * sms, base), triton.cdiv(blocks, MIN_SPLIT_BLOCKS), MAX_SPLITS))
    return Plan(heads, chunks, block_m, block_n, splits, warps, stages, sms)


# the kernels, by name; `benchmarks/static/decode.py` puts capturing stand-ins here to record the launches
_kernels = {"decode": dk.mma_decode_kernel, "merge": dk.mma_decode_merge_kernel}


def _run(kind: str, grid, args, meta, warps: int, stages: int):
    COUNTS[kind] += 1
    if interpreting():
        _fix_interpreter_index()
        _kernels[kind][grid](*args, **meta)
    else:
        _kernels[kind][grid](*args, **meta, num_warps=warps, num_stages=stages)


def decode_forward(q, k, v, mask, scale, win=None, window=None):
    """(out, lse, stats) as `triton_ops.triton_forward` returns them, through the split-KV decode kernel."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    B, Hq, Hkv, Lq, Lk, D, meta = _common(q, k, mask, win)
    meta.pop("EXACT_DELTA")
    p = plan(B, Hq, Hkv, Lq, Lk, D, q.device, window, q.dtype, meta["HAS_GROUPS"] or meta["HAS_WINDOW"])
    keep32 = q.dtype != torch.float32 and triton_ops.HALF_DELTA == "fp32_out"
    o = torch.empty((B, Hq, Lq, D), dtype=torch.float32 if keep32 else q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    stats = torch.empty((2, B, Hq, Lq), dtype=torch.float32, device=q.device) if meta["SPLIT_STATS"] else None
    mrow, linv = (stats[0], stats[1]) if stats is not None else (lse, lse)
    S = p.splits
    rows = B * Hq * Lq
    if S > 1:
        pacc = torch.empty((rows * S * D,), dtype=torch.float32, device=q.device)
        pm = torch.empty((rows * S,), dtype=torch.float32, device=q.device)
        pl = torch.empty((rows * S,), dtype=torch.float32, device=q.device)
    else:  # DIRECT: never read
        pacc, pm, pl = lse, lse, lse
    mptrs, mstrides = _mask_args(mask, win)
    args = (q, k, v, o, lse, mrow, linv, pacc, pm, pl, *mptrs,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), *mstrides,
            Hq, Hkv, Lq, Lk, D, Hq // Hkv, p.heads, p.chunks, scale * LOG2E, window or 0)
    _run("decode", p.grid(B, Hkv), args, dict(meta, NUM_SPLITS=S, BLOCK_M=p.block_m, BLOCK_N=p.block_n),
         p.num_warps, p.num_stages)
    if S > 1:
        margs = (o, lse, mrow, linv, pacc, pm, pl, o.stride(1), o.stride(2), Hq, Lq, D)
        mmeta = dict(NUM_SPLITS=S, BLOCK_S=triton.next_power_of_2(S), BLOCK_D=meta["BLOCK_D"],
                     UPCAST=meta["UPCAST"], SPLIT_STATS=meta["SPLIT_STATS"])
        _run("merge", (rows,), margs, mmeta, 4, 1)
    if keep32:  # the stats slot carries the fp32 output for the backward's delta
        return o.to(q.dtype), lse, o
    return o, lse, stats
