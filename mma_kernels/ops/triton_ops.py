"""Launchers and the autograd Function for the Triton kernels.

On CUDA the block sizes are autotuned per (head dim, GQA group, length bucket, document class, dtype);
under ``TRITON_INTERPRET=1`` (CPU tensors) one small fixed configuration is used.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton

from ..mask import NUM_FIELDS, pad_field_values
from . import triton_kernels as tk
from .torch_ops import check_no_double_backward

LOG2E = 1.4426950408889634


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _fix_interpreter_index() -> bool:
    """Version compat, interpreter only. Older triton's interpreter (3.6 has it, 3.9 does not) turns a
    scalar into a Python int with ``int(handle.data)``, but a reduction's scalar is held there as a
    1-element 1-D array, which recent NumPy (2.4) refuses ("only 0-dimensional arrays can be converted to
    Python scalars"), so ``for n in range(lo, hi)`` over reduced bounds fails. Newer triton uses
    ``int(handle.data.squeeze())``; do the same where the old line is still there. Compiled (GPU) kernels
    are unaffected. Returns whether the fix is in place."""
    try:
        import inspect

        from triton.runtime import interpreter as ti

        orig = ti._patch_lang_tensor
        if getattr(orig, "_mma_index_fix", False):
            return True
        if "int(self.handle.data))" not in inspect.getsource(orig):
            return False
    except Exception:  # a triton without this internal: nothing to fix
        return False

    def _patch_lang_tensor(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    _patch_lang_tensor._mma_index_fix = True
    ti._patch_lang_tensor = _patch_lang_tensor
    return True


# How the backward's delta = rowsum(P * dP) is obtained for fp16/bf16 inputs (fp32 always uses "exact"):
#   "out"      rowsum(dO * O) from the stored (rounded) output, as FlashAttention-2 (default);
#   "fp32_out" rowsum(dO * O) from the unrounded fp32 output (the forward keeps an fp32 copy of O);
#   "exact"    rowsum(P * dP) from the dQ kernel's own P and dP (one extra QK^T, dO V^T pass in dQ).
# benchmarks/precision.py measures all three (docs/kernel.md, "Precision").
HALF_DELTA = "out"

# GQA in the dK/dV kernel (GROUP = Hq / Hkv > 1):
#   "split" one program per key block and *query* head, each writing its head's fp32 share of dK/dV, summed over
#           the group by the launcher (FlashAttention-2's way, here in fp32, so dK/dV are rounded once as
#           before): no loop over the group in the kernel, which keeps its wgmma tiles spill-free on sm_90 at
#           head dims 96/128. Costs transient fp32 shares in the backward, bounded by DKDV_SHARE_BYTES.
#   "loop"  one program per KV head looping over the GROUP query heads: no extra memory; at head-dim blocks
#           over 64 that loop spills registers.
#   "auto"  (default) "loop" up to a head-dim block of 64, where it does not spill, "split" above.
# benchmarks/results/static/CHANGES.md, "dK/dV spills".
DKDV_GQA = "auto"
# "split" bounds its transient fp32 shares: the launcher runs the kernel over as many KV heads' query heads at a
# time as fit in this many bytes (at least one KV head's group: 2 * B * GROUP * Lk * D * 4 bytes).
DKDV_SHARE_BYTES = 256 << 20

# K/V (forward, dQ) tiles through TMA tensor descriptors (`tl.make_tensor_descriptor`):
#   "auto" (default) on sm_90 and newer, and under the interpreter (so CI runs the path sm_90 runs), whenever
#          every such tensor allows a descriptor (`_tma_ok`); pointer loads (cp.async) elsewhere (sm_80, odd strides);
#          masked tiles that may hold padding keys keep masked pointer loads unless the mask has no padding
#          (`_tma_level`: the kernels' TMA constexpr 0, 1 or 2);
#   "on"   whenever the tensors allow it, whatever the device (the static report compiles sm_90 launches this way);
#   "off"  pointer loads everywhere.
TMA = "auto"

# The widest masked key tile of the forward and dQ kernels (0: no limit). With a wider key tile (128x128) the
# masked loops walk the same keys in tiles of this many (`fwd_kernel._fwd_row_block`, `dq_kernel._dq_pass`):
# whole 128-key masked tiles spill on sm_90 (each per-key field of the rule takes 32 registers per thread), and
# the plain loop keeps the full width (benchmarks/results/static/CHANGES.md, "128-wide key tiles").
MASKED_N = 64
# The tallest masked row tile of the dK/dV kernel (0: no limit), likewise: with 64 query rows (64x128) its masked
# loops walk the same rows in tiles of this many (`dkdv_kernel.mma_bwd_dkdv_kernel`); whole 64-row masked tiles
# spill on sm_90 (316 B at bf16 D=128: each per-row field of the rule takes 16 registers per thread).
MASKED_M = 32

# Small fixed tiles under the interpreter; tests may override them to exercise more block edges.
INTERPRET_BLOCKS = {"fwd": (32, 32), "dq": (32, 32), "dkdv": (32, 32)}


# Autotune lists, checked statically for sm_90 (`python -m benchmarks.static --arch 90`, results in
# benchmarks/results/static/): every config up to head dim 128 is spill-free. Backward tiles keep >= 64 rows on
# the wgmma side (32-row dQ tiles and 32-key dK/dV tiles fall back to mma.sync). dK/dV runs 32 query rows x
# 128 or 64 keys with 8 warps, under GQA one program per query head above a head-dim block of 64 (DKDV_GQA):
# 64x64 spills at head dims 96/128 even so (724 B at bf16 D=128), 32x128 is spill-free and issues the fewest
# instructions per score of the wgmma tiles (benchmarks/results/static/CHANGES.md, "dK/dV spills"). The
# forward lists no 64x64 tile: with the causal diagonal loop it spills at head dims 96 and 128 (w8 s2:
# 168-172 B; w4 s2 104 B and w4 s1 112 B before that loop; w8 s1 has no cp.async; CHANGES.md, "Masked
# tiles"). 128-wide key tiles (masked loops in MASKED_N-key tiles) for 16-bit inputs: the forward's up to a
# head-dim block of 128, dQ's up to 64 (`_WIDEST`; dQ's spills at 128: CHANGES.md, "128-wide key tiles").
_CONFIGS = {  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
    "fwd": [(128, 64, 8, 3), (128, 32, 8, 3), (64, 32, 4, 2), (128, 128, 8, 2)],
    "dq": [(128, 64, 8, 2), (64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2), (128, 128, 8, 2)],
    "dkdv": [(32, 128, 8, 2), (32, 64, 8, 2), (64, 128, 8, 2)],
}


def _configs(kind: str):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in _CONFIGS[kind]]


# the widest tile (BLOCK_M * BLOCK_N) each kernel keeps, by head-dim block: (up to this block, widest tile)
_WIDEST = {"fwd": ((128, 128 * 128), (1 << 30, 64 * 64)),
           "dq": ((64, 128 * 128), (128, 128 * 64), (1 << 30, 64 * 64)),
           "dkdv": ((128, 128 * 64), (1 << 30, 64 * 64))}


def _prune(kind, configs, named_args, **kwargs):
    """The tiles whose register / shared-memory footprint fits (`_WIDEST`): wide heads (a head-dim block over 128)
    up to 64x64; no 128x128 tile for fp32 inputs (twice the shared memory per tile), nor for launches of at most
    16 query rows (one row block: nothing to gain; at Lq = 1, which the JIT specialises, the forward's spills
    168 B: benchmarks/results/static/perf/decode_sm90_with_fwd128x128.md); likewise no 64x128 dK/dV tile, nor
    wherever that tile spills (`_dkdv_tall_fits`). At least the smallest tile is kept."""
    bd = named_args.get("BLOCK_D", kwargs.get("BLOCK_D", 128))
    limit = next(area for top, area in _WIDEST[kind] if bd <= top)
    q = named_args.get("Q")
    if (q is not None and q.element_size() > 2) or named_args.get("Lq", 1 << 30) <= 16:
        limit = min(limit, 128 * 64 if kind != "dkdv" else 128 * 32)
    if kind == "dkdv" and not _dkdv_tall_fits(bd, named_args, kwargs):
        limit = min(limit, 128 * 32)
    keep = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= limit]
    return keep or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


def _dkdv_tall_fits(bd, named_args, kwargs) -> bool:
    """Whether a dK/dV launch may take the 64x128 tile: where it compiles spill-free on sm_90
    (benchmarks/results/static/sm90.md, `perf/dkdv64_padding.md`, `perf/dkdv64_groups_window.md`): q and dO
    through descriptors (TMA level 2, no padding, above a head-dim block of 64: `mma_bwd_dkdv_kernel`'s USE_TMA;
    pointer loads spill 116 B at D=128 with padding), the plain MMA rule (groups or a window: 68 B), no query
    positions, and no GQA group loop (`_dkdv_split`; the loop spills 48 B at D=64)."""
    get = lambda name, default: kwargs.get(name, named_args.get(name, default))  # noqa: E731
    return (get("TMA", 2) == 2 and bd > 64 and not (get("HAS_GROUPS", False) or get("HAS_WINDOW", False)
                                                     or get("HAS_QPOS", False))
            and (get("SPLIT_GROUP", True) or get("GROUP", 1) == 1))


def _pruned(kind):
    return {"early_config_prune": functools.partial(_prune, kind)}


# The autotune key. LQ_BUCKET: log2(Lq). DOC_BUCKET: the mask's document class (`_doc_bucket`), which decides how
# many tiles are masked and so whether a wide tile pays (its inferred cost is 0.76-0.78x on one long document and
# 1.02-1.19x on packed short ones: benchmarks/results/static/CHANGES.md, rounds four and five): without it the
# first layout a key met would pick the tile for every later one. Neither is read by the kernels.
_KEY = ["D", "GROUP", "LQ_BUCKET", "DOC_BUCKET", "HAS_GROUPS", "HAS_WINDOW", "EXACT_DELTA", "HAS_QPOS"]


def _doc_bucket(mask) -> int:
    """The autotune key's document class: `MMAMask.doc_length` (the work-weighted mean document length) in
    doublings: 0 below 256 tokens, 1 below 512, ... capped at 6 (8K tokens and longer). A mask rebuilt from its
    fields without that figure (`ops.library.mask_from_fields` inside a compiled region) is class 0."""
    length = getattr(mask, "doc_length", 0)
    return min(6, max(0, int(length).bit_length() - 8)) if length else 0


_tuned = {
    "fwd": triton.autotune(_configs("fwd"), key=_KEY + ["TMA"], prune_configs_by=_pruned("fwd"))(tk.mma_fwd_kernel),
    # the dQ kernel adds rowsum(P * dP) to DELTA in place under EXACT_DELTA: each tuning run starts from the original
    "dq": triton.autotune(_configs("dq"), key=_KEY + ["TMA"], prune_configs_by=_pruned("dq"),
                          restore_value=["DELTA"])(tk.mma_bwd_dq_kernel),
    "dkdv": triton.autotune(_configs("dkdv"), key=_KEY + ["SPLIT_GROUP", "TMA"],
                            prune_configs_by=_pruned("dkdv"))(tk.mma_bwd_dkdv_kernel),
}
_raw = {"fwd": tk.mma_fwd_kernel, "dq": tk.mma_bwd_dq_kernel, "dkdv": tk.mma_bwd_dkdv_kernel}


def _launch(kind: str, grid_len: int, grid_heads: int, args, **meta):
    if interpreting():
        _fix_interpreter_index()
        bm, bn = INTERPRET_BLOCKS[kind]
        blocks = bm if kind != "dkdv" else bn
        _raw[kind][(triton.cdiv(grid_len, blocks), grid_heads)](*args, BLOCK_M=bm, BLOCK_N=bn, **meta)
    else:
        key = "BLOCK_M" if kind != "dkdv" else "BLOCK_N"
        _tuned[kind][lambda m: (triton.cdiv(grid_len, m[key]), grid_heads)](*args, **meta)


def _dkdv_split(block_d: int) -> bool:
    """Whether the dK/dV kernel runs one program per query head under GQA (see DKDV_GQA)."""
    if DKDV_GQA not in ("auto", "split", "loop"):
        raise ValueError(f"triton_ops.DKDV_GQA must be 'auto', 'split' or 'loop', got {DKDV_GQA!r}")
    return DKDV_GQA == "split" or (DKDV_GQA == "auto" and block_d > 64)


def _tma_ok(*ts: torch.Tensor) -> bool:
    """Whether K/V-style operands may move through TMA descriptors (see TMA): a 16-byte aligned start, unit
    stride along the head dim, every other stride a multiple of 16 bytes (what the copy engine requires)."""
    if TMA not in ("auto", "on", "off"):
        raise ValueError(f"triton_ops.TMA must be 'auto', 'on' or 'off', got {TMA!r}")
    if TMA == "off":
        return False
    if TMA == "auto" and not interpreting():
        dev = ts[0].device
        if dev.type != "cuda" or torch.cuda.get_device_capability(dev)[0] < 9:
            return False
    for t in ts:
        es = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * es % 16 for s in t.stride()[:-1]):
            return False
    if ts[0].device.type == "cuda":
        _ensure_allocator()
    return True


def _tma_level(mask, k, v) -> int:
    """The kernels' TMA constexpr: 0 pointer loads; 1 K/V through descriptors except in masked tiles that may
    hold padding keys (those rows must read 0 whatever the cache holds); 2 there too, for a mask with no
    padding at all (`MMAMask.pad_keys` False; masks rebuilt from raw fields count as padded)."""
    if not _tma_ok(k, v):
        return 0
    return 1 if getattr(mask, "pad_keys", True) else 2


def _ensure_allocator() -> None:
    """Descriptors built inside a kernel need a small global scratch buffer per program: give triton a torch
    allocator unless the caller set one (triton keeps it per thread)."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _common(q, k, mask, win):
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    block_d = max(16, triton.next_power_of_2(D))
    meta = dict(BLOCK_D=block_d, EVEN_D=D == block_d,
                DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
                UPCAST=interpreting() and q.dtype == torch.bfloat16,
                HAS_GROUPS=mask.meta.shape[1] > NUM_FIELDS, HAS_WINDOW=win is not None,
                SPLIT_STATS=q.dtype == torch.float32,
                EXACT_DELTA=q.dtype == torch.float32 or HALF_DELTA == "exact")
    return B, Hq, Hkv, Lq, Lk, D, meta


FIELD_ALIGN = 128  # the kernels' field stride is a multiple of this, and of every key block (BLOCK_N <= 128)


def _kernel_fields(mask) -> torch.Tensor:
    """`mask.meta` as the kernels read it: the field stride a multiple of FIELD_ALIGN, columns [Lk, stride)
    holding padding's values (`mask.pad_field_values`). Every key tile a kernel visits then lies inside the
    stride, so key-field loads need no bound at all (past Lk they read padding: KMOD 31, DOC -1), and field
    loads keep their 16-element alignment at any Lk. One O(L) copy, cached on the mask, only when Lk is not a
    multiple of FIELD_ALIGN."""
    meta = mask.meta
    B, F, Lk = meta.shape
    if Lk % FIELD_ALIGN == 0 and meta.stride(1) == Lk:
        return meta
    cached = mask.__dict__.get("_kernel_fields")
    if cached is not None and cached.shape == meta.shape and cached.device == meta.device:
        return cached
    stride = -(-Lk // FIELD_ALIGN) * FIELD_ALIGN
    pad = torch.tensor(pad_field_values(Lk)[:F], dtype=meta.dtype, device=meta.device)
    out = pad.view(1, F, 1).repeat(B, 1, stride)
    out[:, :, :Lk] = meta
    out = out[:, :, :Lk]
    mask.__dict__["_kernel_fields"] = out
    return out


def _mask_args(mask, win):
    """Pointers and strides of the mask's fields (`_kernel_fields`); WIN is a dummy (never read) without a
    window."""
    meta = _kernel_fields(mask)
    w = win if win is not None else meta
    return (meta, mask.padcum, w), (meta.stride(0), meta.stride(1), mask.padcum.stride(0), w.stride(0), w.stride(1))


def _qpos_args(q_pos, mask, win, Lq: int, backward: bool = False) -> dict:
    """Kernel arguments for query rows at the absolute positions `q_pos` (LongTensor [Lq], increasing):
    QPOS int32 = the positions, and for the dK/dV kernel, per batch row and key, the first and last query
    row that may see the key ([B, 2, Lk]: a search of the key's Q_LO / Q_HI bounds in the positions)."""
    if q_pos is None:
        return dict(HAS_QPOS=False)
    pos = q_pos.to(device=mask.meta.device, dtype=torch.int32).contiguous()
    if backward:
        from ..mask import Q_HI, Q_LO, WIN_Q_HI

        lo = mask.meta[:, Q_LO].contiguous()
        hi = (mask.meta[:, Q_HI] if win is None else win[:, WIN_Q_HI]).contiguous()
        B = lo.shape[0]
        first = torch.searchsorted(pos.expand(B, -1).contiguous(), lo, right=False)
        last = torch.searchsorted(pos.expand(B, -1).contiguous(), hi, right=True) - 1
        pos = torch.cat([pos, torch.stack([first, last], 1).to(torch.int32).flatten()])
    return dict(QPOS=pos, HAS_QPOS=True)


def triton_forward(q, k, v, mask, scale, win=None, window=None, q_pos=None):
    from . import decode_ops

    if q_pos is None and decode_ops.use_decode(q):  # Lq <= 16 bottom-right rows: split-KV with GQA packing
        return decode_ops.decode_forward(q, k, v, mask, scale, win, window)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    B, Hq, Hkv, Lq, Lk, D, meta = _common(q, k, mask, win)
    meta.update(_qpos_args(q_pos, mask, win, Lq))
    keep32 = q.dtype != torch.float32 and HALF_DELTA == "fp32_out"
    o = torch.empty((B, Hq, Lq, D), dtype=torch.float32 if keep32 else q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    # fp32: row max (base 2) and 1/sum beside the lse, for a backward p = exp2(s - m) / l
    stats = torch.empty((2, B, Hq, Lq), dtype=torch.float32, device=q.device) if meta["SPLIT_STATS"] else None
    mrow, linv = (stats[0], stats[1]) if stats is not None else (lse, lse)
    mptrs, mstrides = _mask_args(mask, win)
    args = (q, k, v, o, lse, mrow, linv, *mptrs,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), *mstrides,
            Hq, Lq, Lk, D, Hq // Hkv, scale * LOG2E, window or 0, int(math.log2(Lq)), _doc_bucket(mask))
    _launch("fwd", Lq, B * Hq, args, **meta, TMA=_tma_level(mask, k, v), MASKED_N=MASKED_N)
    if keep32:  # the stats slot carries the fp32 output for the backward's delta
        return o.to(q.dtype), lse, o
    return o, lse, stats


def _row_stats(lse2, linv, delta):
    """The backward's per-row statistics [B, Hq, Lq] (fp32) as the kernels read them: one buffer each, rows of
    a head `stride(1)` apart, a multiple of 16; past Lq up to that stride the rows hold a neutral value
    (lse2 +inf so p = 0, linv and delta 0). The dK/dV kernel's plain loop bounds its loads by the stride, so
    at Lq not a multiple of 16 they stay 16-row vectors (copies are made only then). `linv` None (not read)
    shares lse2's buffer."""
    B, Hq, Lq = delta.shape
    if Lq % 16 == 0:  # already 16-multiple rows: no copy on the backward's path
        lse2, delta = lse2.contiguous(), delta.contiguous()
        return lse2, lse2 if linv is None else linv.contiguous(), delta
    stride = -(-Lq // 16) * 16
    out = torch.zeros((2 if linv is None else 3, B, Hq, stride), dtype=torch.float32, device=delta.device)
    out[0, ..., :Lq] = lse2
    out[0, ..., Lq:] = float("inf")
    out[1, ..., :Lq] = delta
    if linv is not None:
        out[2, ..., :Lq] = linv
    rows = out[..., :Lq]
    return rows[0], rows[0] if linv is None else rows[2], rows[1]


def triton_backward(q, k, v, o, lse, do, dlse, mask, scale, win=None, window=None, stats=None, q_pos=None):
    q, k, v, do = (_last_dim_contiguous(t) for t in (q, k, v, do))
    B, Hq, Hkv, Lq, Lk, D, meta = _common(q, k, mask, win)
    meta.update(_qpos_args(q_pos, mask, win, Lq, backward=True))
    if meta["EXACT_DELTA"]:  # the dQ kernel adds rowsum(P * dP) (its own P, dP) to -dlse
        delta = -dlse.float() if dlse is not None else torch.zeros_like(lse)
    else:
        if stats is not None and stats.shape == o.shape:  # HALF_DELTA == "fp32_out": the unrounded output
            o, stats = stats, None
        delta = (do.float() * o.float()).sum(-1)
        if dlse is not None:
            delta = delta - dlse.float()
    if stats is not None:  # fp32: row max (+inf on padding rows) and 1/sum
        lse2, linv = stats[0], stats[1]
    else:
        lse2 = torch.where(torch.isinf(lse), torch.full_like(lse, float("inf")), lse * LOG2E)
        linv = None  # not read
    lse2, linv, delta = _row_stats(lse2, linv, delta)
    dq = torch.empty((B, Hq, Lq, D), dtype=q.dtype, device=q.device)
    group = Hq // Hkv
    split = _dkdv_split(meta["BLOCK_D"]) and group > 1
    dk = torch.empty((B, Hkv, Lk, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, Hkv, Lk, D), dtype=v.dtype, device=v.device)
    mptrs, mstrides = _mask_args(mask, win)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2), *mstrides,
               lse2.stride(1))
    bucket = (int(math.log2(Lq)), _doc_bucket(mask))
    w = window or 0
    zero_single = int(dlse is None)  # ds of a one-key row is exactly 0, unless lse is differentiated too
    _launch("dq", Lq, B * Hq, (q, k, v, do, dq, lse2, linv, delta, *mptrs, *strides,
                               Hq, Lq, Lk, D, Hq // Hkv, scale * LOG2E, scale, w, zero_single, *bucket), **meta,
            TMA=_tma_level(mask, k, v), MASKED_N=MASKED_N)
    args = (Hq, Hkv, Lq, Lk, D, group, scale * LOG2E, scale, w, zero_single, Lk - Lq)
    if not split:
        _launch("dkdv", Lk, B * Hkv, (q, k, v, do, dk, dv, lse2, linv, delta, *mptrs, *strides, *args, 0, Hq, *bucket),
                **meta, SPLIT_GROUP=False, TMA=_tma_level(mask, q, do), MASKED_M=MASKED_M)
        return dq, dk, dv
    # each query head's fp32 share, summed over its group and rounded once; a few KV heads per launch
    per_kv = 2 * B * group * Lk * D * 4
    chunk = max(1, min(Hkv, DKDV_SHARE_BYTES // per_kv))
    shares = torch.empty((2, B * chunk * group * Lk * D), dtype=torch.float32, device=k.device)
    for kv0 in range(0, Hkv, chunk):
        n = min(chunk, Hkv - kv0)
        sk, sv = (s[: B * n * group * Lk * D].view(B, n * group, Lk, D) for s in shares)  # contiguous
        _launch("dkdv", Lk, B * n * group, (q, k, v, do, sk, sv, lse2, linv, delta, *mptrs, *strides, *args,
                                            kv0 * group, n * group, *bucket), **meta, SPLIT_GROUP=True,
                TMA=_tma_level(mask, q, do), MASKED_M=MASKED_M)
        dk[:, kv0:kv0 + n] = sk.view(B, n, group, Lk, D).sum(2)
        dv[:, kv0:kv0 + n] = sv.view(B, n, group, Lk, D).sum(2)
    return dq, dk, dv


class TritonMMAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale, win=None, window=None, q_pos=None):
        if q.numel() == 0:  # empty batch or no heads: nothing to launch
            o = torch.zeros_like(q)
            lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            stats = None
        else:
            o, lse, stats = triton_forward(q, k, v, mask, scale, win, window, q_pos)
        ctx.save_for_backward(q, k, v, o, lse, win, stats)
        ctx.mask, ctx.scale, ctx.window = mask, scale, window
        ctx.q_pos = q_pos
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        check_no_double_backward("triton")
        q, k, v, o, lse, win, stats = ctx.saved_tensors
        if q.numel() == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None, None, None, None
        if do is None:
            do = torch.zeros_like(o)
        dq, dk, dv = triton_backward(q, k, v, o, lse, do, dlse, ctx.mask, ctx.scale, win, ctx.window, stats,
                                     getattr(ctx, "q_pos", None))
        return dq, dk, dv, None, None, None, None, None
