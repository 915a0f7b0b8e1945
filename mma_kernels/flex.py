"""FlexAttention glue: a `BlockMask` and a `mask_mod` built from `MMAMask`'s O(L) fields.

`create_block_mask` evaluates a mask function on every (query, key) pair: O(Lq * Lk) time and,
eagerly, O(Lq * Lk) memory. Here the tile lists come from the per-token ranges instead:

1. Per query block and per key block, a few aggregates of the fields (min/max of the key
   ranges, segments, AND/OR of the look-ahead bits, padding counts) decide most tiles at block
   level: surely empty, or surely full (every pair allowed). Work: O(number of tiles).
2. The remaining tiles (diagonal, document / segment / modality / padding boundaries) are
   classified exactly by counting, for each query row of the tile, its allowed keys in the
   tile with prefix sums: valid keys through ``padcum`` for the causal part, keys of each
   modality through per-modality prefix counts for the look-ahead part. A tile is full when
   every row of a whole tile counts ``BLOCK_N`` keys, partial when the count is positive.

Nothing of size Lq x Lk is ever built. Lengths that are not multiples of the block size are
handled as `create_block_mask` handles them: the mask is padded with "not allowed", so an
edge tile is never full. The resulting lists (partial ``kv_*``, full ``full_kv_*``, and their
transposes ``q_*`` / ``full_q_*`` for the backward) equal `create_block_mask`'s exactly.
"""
from __future__ import annotations

import weakref
from typing import Optional, Tuple, Union

import torch

from .mask import DOC, KMOD, KV_HI, KV_LO, QBITS, SEG, MMAMask, _per_run

BlockSize = Union[int, Tuple[int, int]]
EMPTY, PARTIAL, FULL = 0, 1, 2
_ROWS_PER_CHUNK = 1 << 18  # exact classification: rows (tiles x BLOCK_M) handled per step


def _block_sizes(block_size: BlockSize) -> Tuple[int, int]:
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        sizes = (block_size, block_size)
    elif isinstance(block_size, tuple) and len(block_size) == 2:
        sizes = block_size
    else:
        raise TypeError(f"block_size: expected an int or a (q_block, kv_block) pair of ints, got {block_size!r}")
    for s in sizes:
        if not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise ValueError(f"block_size: block sizes must be positive ints, got {block_size!r}")
    return sizes


def _check_window(window) -> Optional[int]:
    """None (no limit) or a positive int: causal keys must satisfy ``i - j < window``."""
    if window is None:
        return None
    if not isinstance(window, int) or isinstance(window, bool):
        raise TypeError(f"window: expected a positive int or None, got {type(window).__name__} {window!r}")
    if window < 1:
        raise ValueError(f"window: expected a positive int or None, got {window}")
    return window


def _blocks(x: torch.Tensor, size: int, fill: int) -> torch.Tensor:
    """[B, L] -> [B, nblocks, size], the tail padded with `fill`."""
    B, L = x.shape
    n = -(-L // size)
    pad = n * size - L
    if pad:
        x = torch.cat([x, x.new_full((B, pad), fill)], dim=1)
    return x.view(B, n, size)


def _or_reduce(x: torch.Tensor) -> torch.Tensor:
    """Bitwise OR over the last dim (int64)."""
    out = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for bit in range(31):
        out |= (((x >> bit) & 1).amax(-1)) << bit
    return out


def _and_reduce(x: torch.Tensor) -> torch.Tensor:
    """Bitwise AND over the last dim (int64, values < 2**31)."""
    out = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for bit in range(31):
        out |= (((x >> bit) & 1).amin(-1)) << bit
    return out


def tile_classes(mask: MMAMask, q_len: Optional[int] = None, block_size: BlockSize = 128,
                 window: Optional[int] = None) -> torch.Tensor:
    """int8 [B, nQB, nKB]: EMPTY (0), PARTIAL (1) or FULL (2) for every (query block, key block) tile."""
    W = _check_window(window)
    BM, BN = _block_sizes(block_size)
    off = mask.query_offset(q_len)
    Lk = mask.seq_len
    Lq = Lk - off
    dev = mask.device
    m = mask.meta.long()
    B = m.shape[0]
    big = Lk
    pad = mask.padcum.long()  # [B, Lk + 1]

    # ---------------------------------------------------------------- per query block
    lo = _blocks(m[:, KV_LO, off:], BM, big)  # [B, nQB, BM]; missing rows are padding-like
    hi = _blocks(m[:, KV_HI, off:], BM, -1)
    rvalid = _blocks(m[:, DOC, off:] >= 0, BM, False)
    rseg = _blocks(m[:, SEG, off:], BM, -1)
    rbits = _blocks(m[:, QBITS, off:], BM, 0)
    nQB = lo.shape[1]
    r_min_lo = lo.amin(-1)
    r_max_hi = hi.amax(-1)
    r_all_valid = rvalid.all(-1)
    r_max_lo = torch.where(rvalid, lo, -1).amax(-1)
    r_seg_min = torch.where(rvalid, rseg, big).amin(-1)
    r_seg_max = rseg.amax(-1)
    r_bits_or = _or_reduce(rbits)
    r_bits_and = torch.where(r_all_valid, _and_reduce(rbits), 0)
    r_first = off + torch.arange(nQB, device=dev) * BM  # absolute position of the block's first row
    r_last = off + torch.clamp((torch.arange(nQB, device=dev) + 1) * BM, max=Lq) - 1

    # ---------------------------------------------------------------- per key block
    kvalid = _blocks(m[:, DOC] >= 0, BN, False)
    kseg = _blocks(m[:, SEG], BN, -1)
    kbit = torch.where(kvalid, 1 << _blocks(m[:, KMOD], BN, 0), 0)
    nKB = kvalid.shape[1]
    k_start = torch.arange(nKB, device=dev) * BN
    k_end = torch.clamp(k_start + BN, max=Lk)  # exclusive
    k_any_valid = kvalid.any(-1)
    k_all_valid = kvalid.all(-1)  # a short last block has missing keys: never all valid
    k_seg_min = torch.where(kvalid, kseg, big).amin(-1)
    k_seg_max = kseg.amax(-1)
    k_bits = _or_reduce(kbit)

    # ---------------------------------------------------------------- block-level decisions [B, nQB, nKB]
    R = lambda x: x[..., :, None]  # noqa: E731  per query block -> grid
    K = lambda x: x[..., None, :]  # noqa: E731  per key block -> grid
    same_seg = (R(r_seg_min) == R(r_seg_max)) & (K(k_seg_min) == K(k_seg_max)) & (R(r_seg_min) == K(k_seg_min))
    # no key of the tile is in any row's causal window [i - W + 1, i] ...
    out_of_window = K(k_start) > R(r_last)
    if W is not None:
        out_of_window = out_of_window | (K(k_end) - 1 < R(r_first) - W + 1)
    # ... nor reachable through the policy, which needs a shared segment and a policy bit
    no_policy = ((R(r_bits_or) & K(k_bits)) == 0) | (K(k_seg_min) > R(r_seg_max)) | (K(k_seg_max) < R(r_seg_min))
    empty = (
        ~R(rvalid.any(-1)) | ~K(k_any_valid)
        | (R(r_min_lo) > K(k_end) - 1) | (R(r_max_hi) < K(k_start))
        | (out_of_window & no_policy)
    )
    whole = R(r_all_valid) & K(k_all_valid)
    first_key = R(r_max_lo) if W is None else torch.maximum(R(r_max_lo), R(r_last) - W + 1)
    causal_full = (first_key <= K(k_start)) & (R(r_first) >= K(k_end) - 1)
    look_full = same_seg & ((R(r_bits_and) & K(k_bits)) == K(k_bits))
    full = whole & (causal_full | look_full)
    cls = torch.where(full, FULL, torch.where(empty, EMPTY, -1)).to(torch.int8)

    # ---------------------------------------------------------------- exact classification of the rest
    todo = (cls < 0).nonzero()  # [T, 3]: (b, m, n)
    if todo.numel():
        cls[todo[:, 0], todo[:, 1], todo[:, 2]] = _exact(m, pad, todo, off, Lq, Lk, BM, BN, W)
    return cls


def _exact(m, pad, todo, off, Lq, Lk, BM, BN, W) -> torch.Tensor:
    """Exact class of each tile in `todo` [T, 3] from per-row allowed-key counts (prefix sums).

    Row i's allowed keys are A | S: A = valid keys in [max(doc start, i - W + 1), i] (causal,
    windowed), S = valid keys of its segment whose modality is in its policy bits. Per tile
    [a, e): |A| + sum over policy modalities k of (|S_k| - |A & S_k|), each an interval count."""
    dev = m.device
    valid = m[:, DOC] >= 0
    pos = torch.arange(Lk, device=dev).expand_as(valid)
    seg_lo = _per_run(m[:, SEG], torch.where(valid, pos, Lk), "amin", Lk)
    seg_hi = _per_run(m[:, SEG], torch.where(valid, pos, -1), "amax", -1)
    kmod = m[:, KMOD]
    bits_any = int(_or_reduce(torch.where(valid, m[:, QBITS], 0).flatten()[None])[0])
    present = torch.unique(kmod[valid]).tolist() if bits_any else []
    looks = [k for k in present if (bits_any >> k) & 1]
    zero = torch.zeros_like(pad[:, :1])
    counts = {k: torch.cat([zero, ((kmod == k) & valid).long().cumsum(1)], 1).flatten() for k in looks}
    stride = Lk + 1
    flat_pad = pad.flatten()
    out = torch.empty(todo.shape[0], dtype=torch.int8, device=dev)
    step = max(1, _ROWS_PER_CHUNK // BM)
    rr = torch.arange(BM, device=dev)
    for t0 in range(0, todo.shape[0], step):
        b, mb, nb = todo[t0:t0 + step].unbind(1)
        rows = mb[:, None] * BM + rr  # [T, BM] query rows
        exists = rows < Lq
        i = off + rows.clamp(max=Lq - 1)  # absolute positions
        bi = b[:, None].expand_as(i)
        lo = torch.where(exists, m[bi, KV_LO, i], Lk)
        if W is not None:
            lo = torch.maximum(lo, i - W + 1)
        hi = torch.where(exists, m[bi, KV_HI, i], -1)
        s_lo, s_hi = seg_lo[bi, i], seg_hi[bi, i]
        a = (nb * BN)[:, None]
        e = torch.clamp(a + BN, max=Lk)
        base = bi * stride

        def span(cum, x, y):  # count in [x, y) of the prefix sums `cum` (flat), 0 when empty
            x, y = x.clamp(0, Lk), y.clamp(0, Lk)
            y = torch.maximum(x, y)
            return cum[base + y] - cum[base + x]

        # causal part A: valid keys in [max(a, lo), min(e, i + 1))
        x, y = torch.maximum(a, lo), torch.minimum(e, i + 1)
        n_ok = (y - x).clamp(min=0) - span(flat_pad, x, y)
        # policy part: keys of the segment [s_lo, s_hi] of a modality in the row's bits, minus A
        sx, sy = torch.maximum(a, s_lo), torch.minimum(e, s_hi + 1)
        ax = torch.maximum(x, s_lo)
        qbits = m[bi, QBITS, i]
        for k, cum in counts.items():
            n_ok = n_ok + torch.where(((qbits >> k) & 1) != 0, span(cum, sx, sy) - span(cum, ax, y), 0)
        n_ok = torch.where(exists & (hi >= 0), n_ok, 0)
        full = (n_ok == BN).all(-1)
        out[t0:t0 + step] = torch.where(full, FULL, torch.where(n_ok.sum(-1) > 0, PARTIAL, EMPTY)).to(torch.int8)
    return out


def _ordered(dense: torch.Tensor):
    """(num_blocks [B, 1, R], indices [B, 1, R, C]) of a 0/1 matrix, in `create_block_mask`'s order:
    present blocks ascending, then the absent ones ascending."""
    d = dense.to(torch.int32)
    num = d.sum(-1).to(torch.int32)
    idx = torch.argsort(d, dim=-1, descending=True, stable=True).to(torch.int32)
    return num[:, None].contiguous(), idx[:, None].contiguous()


def mask_mod(mask: MMAMask, q_len: Optional[int] = None, window: Optional[int] = None):
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` reading `mask`'s O(L) fields (bottom-right
    aligned for ``q_len < Lk``): the contract for the pairs inside partial tiles."""
    W = _check_window(window)
    off = mask.query_offset(q_len)
    doc, seg, kmod, qbits = (mask.meta[:, f].contiguous() for f in (DOC, SEG, KMOD, QBITS))

    def mma_mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + off
        qd = doc[b, i]
        look = (seg[b, i] == seg[b, kv_idx]) & (((qbits[b, i] >> kmod[b, kv_idx]) & 1) != 0)
        return (qd >= 0) & (qd == doc[b, kv_idx]) & ((kv_idx <= i) | look)

    def mma_window_mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + off
        qd = doc[b, i]
        look = (seg[b, i] == seg[b, kv_idx]) & (((qbits[b, i] >> kmod[b, kv_idx]) & 1) != 0)
        return (qd >= 0) & (qd == doc[b, kv_idx]) & (((kv_idx <= i) & (i - kv_idx < W)) | look)

    return mma_mask_mod if W is None else mma_window_mask_mod


def to_block_mask(mask: MMAMask, block_size: BlockSize = 128, q_len: Optional[int] = None,
                  window: Optional[int] = None):
    """A `torch.nn.attention.flex_attention.BlockMask` for `mask`, built from its O(L) fields.

    Same block lists as ``create_block_mask(mask_mod(mask, q_len), B, None, Lq, Lk,
    BLOCK_SIZE=block_size)``, without evaluating the mask on every (query, key) pair.
    ``block_size`` is an int or a ``(q_block, kv_block)`` pair; ``q_len`` defaults to ``Lk``
    (queries bottom-right aligned when shorter). The mask is shared by all heads (``H = 1``).
    """
    from torch.nn.attention.flex_attention import BlockMask

    BM, BN = _block_sizes(block_size)
    off = mask.query_offset(q_len)
    Lq = mask.seq_len - off
    cls = tile_classes(mask, Lq, (BM, BN), window)
    partial, full = cls == PARTIAL, cls == FULL
    kv_num, kv_idx = _ordered(partial)
    fkv_num, fkv_idx = _ordered(full)
    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, fkv_num, fkv_idx, BLOCK_SIZE=(BM, BN),
                                  mask_mod=mask_mod(mask, Lq, window), seq_lengths=(Lq, mask.seq_len),
                                  compute_q_blocks=False)
    # the backward's transposes, from the same tile matrix (what from_kv_blocks would derive)
    bm.q_num_blocks, bm.q_indices = _ordered(partial.transpose(1, 2))
    bm.full_q_num_blocks, bm.full_q_indices = _ordered(full.transpose(1, 2))
    return bm


_CACHE: "weakref.WeakKeyDictionary[MMAMask, dict]" = weakref.WeakKeyDictionary()


def cached_block_mask(mask: MMAMask, q_len: int, block_size: BlockSize = 128, window: Optional[int] = None):
    """`to_block_mask`, built once per (mask, q_len, block_size, window) and reused by every layer."""
    per_mask = _CACHE.setdefault(mask, {})
    key = (q_len, _block_sizes(block_size), _check_window(window))
    if key not in per_mask:
        per_mask[key] = to_block_mask(mask, block_size, q_len, window)
    return per_mask[key]
