"""FlexAttention glue: a `BlockMask` and a `mask_mod` built from `MMAMask`'s O(L) fields.

`create_block_mask` evaluates a mask function on every (query, key) pair: O(Lq * Lk) time and,
eagerly, O(Lq * Lk) memory. Here the tile lists come from the per-token ranges instead:

1. Per query block and per key block, a few aggregates of the fields (min/max of the key
   ranges, of the segment and group runs, AND/OR of the policy bits, padding counts) decide
   most tiles at block level: surely empty, or surely full (every pair allowed), with the
   causal window when one is given. Work: O(number of tiles).
2. The remaining tiles (diagonal, window edge, document / segment / group / modality /
   padding boundaries) are classified exactly by counting, for each query row of the tile,
   its allowed keys in the tile with prefix sums: valid keys through ``padcum`` for the causal
   part, keys of each modality through per-modality prefix counts for the segment and group
   parts. A tile is full when every row of a whole tile counts ``BLOCK_N`` keys, partial when
   the count is positive.

Nothing of size Lq x Lk is ever built. Lengths that are not multiples of the block size are
handled as `create_block_mask` handles them: the mask is padded with "not allowed", so an
edge tile is never full. The resulting lists (partial ``kv_*``, full ``full_kv_*``, and their
transposes ``q_*`` / ``full_q_*`` for the backward) equal `create_block_mask`'s exactly.
"""
from __future__ import annotations

import weakref
from typing import Optional, Tuple, Union

import torch

from .mask import DOC, GBITS, GRP, KMOD, KV_HI, KV_LO, QBITS, SEG, MMAMask, _per_run
from .validation import check_window

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
    """None (no limit) or an int >= 1: causal keys must satisfy ``i - j < window``."""
    check_window(window)
    return None if window is None else int(window)


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
    big = Lk
    pad = mask.padcum.long()  # [B, Lk + 1]
    # mutual levels: (run field, bits field): segments under the policy, groups under the group policy
    levels = [(SEG, QBITS)] + ([(GRP, GBITS)] if mask.has_groups else [])

    # ---------------------------------------------------------------- per query block
    lo = _blocks(m[:, KV_LO, off:], BM, big)  # [B, nQB, BM]; missing rows are padding-like
    hi = _blocks(m[:, KV_HI, off:], BM, -1)
    rvalid = _blocks(m[:, DOC, off:] >= 0, BM, False)
    nQB = lo.shape[1]
    r_any_valid, r_all_valid = rvalid.any(-1), rvalid.all(-1)
    r_min_lo = lo.amin(-1)
    r_max_hi = hi.amax(-1)
    r_max_lo = torch.where(rvalid, lo, -1).amax(-1)
    r_first = off + torch.arange(nQB, device=dev) * BM  # absolute position of the block's first row
    r_last = off + torch.clamp((torch.arange(nQB, device=dev) + 1) * BM, max=Lq) - 1

    # ---------------------------------------------------------------- per key block
    kvalid = _blocks(m[:, DOC] >= 0, BN, False)
    kbit = torch.where(kvalid, 1 << _blocks(m[:, KMOD], BN, 0), 0)
    nKB = kvalid.shape[1]
    k_start = torch.arange(nKB, device=dev) * BN
    k_end = torch.clamp(k_start + BN, max=Lk)  # exclusive
    k_any_valid = kvalid.any(-1)
    k_all_valid = kvalid.all(-1)  # a short last block has missing keys: never all valid
    k_bits = _or_reduce(kbit)

    # ---------------------------------------------------------------- block-level decisions [B, nQB, nKB]
    R = lambda x: x[..., :, None]  # noqa: E731  per query block -> grid
    K = lambda x: x[..., None, :]  # noqa: E731  per key block -> grid
    # no key of the tile is in any row's causal window [i - W + 1, i] ...
    out_of_window = K(k_start) > R(r_last)
    if W is not None:
        out_of_window = out_of_window | (K(k_end) - 1 < R(r_first) - W + 1)
    # ... nor reachable through a mutual level, which needs a shared run and a policy bit
    unreachable = out_of_window
    whole = R(r_all_valid) & K(k_all_valid)
    first_key = R(r_max_lo) if W is None else torch.maximum(R(r_max_lo), R(r_last) - W + 1)
    full = (first_key <= K(k_start)) & (R(r_first) >= K(k_end) - 1)  # causal: every key in every window
    for run_f, bits_f in levels:
        rrun = _blocks(m[:, run_f, off:], BM, -1)
        rbits = _blocks(m[:, bits_f, off:], BM, 0)
        krun = _blocks(m[:, run_f], BN, -1)
        r_run_min, r_run_max = torch.where(rvalid, rrun, big).amin(-1), rrun.amax(-1)
        k_run_min, k_run_max = torch.where(kvalid, krun, big).amin(-1), krun.amax(-1)
        r_bits_and = torch.where(r_all_valid, _and_reduce(rbits), 0)
        no_pair = ((R(_or_reduce(rbits)) & K(k_bits)) == 0) | (K(k_run_min) > R(r_run_max)) | (K(k_run_max) < R(r_run_min))
        unreachable = unreachable & no_pair
        # one run holds every row and key, and every row may see every key modality of the tile
        one_run = (R(r_run_min) == R(r_run_max)) & (K(k_run_min) == K(k_run_max)) & (R(r_run_min) == K(k_run_min))
        full = full | (one_run & ((R(r_bits_and) & K(k_bits)) == K(k_bits)))
    empty = (~R(r_any_valid) | ~K(k_any_valid) | (R(r_min_lo) > K(k_end) - 1) | (R(r_max_hi) < K(k_start))
             | unreachable)
    cls = torch.where(whole & full, FULL, torch.where(empty, EMPTY, -1)).to(torch.int8)

    # ---------------------------------------------------------------- exact classification of the rest
    todo = (cls < 0).nonzero()  # [T, 3]: (b, m, n)
    if todo.numel():
        cls[todo[:, 0], todo[:, 1], todo[:, 2]] = _exact(m, pad, levels, todo, off, Lq, Lk, BM, BN, W)
    return cls


def _exact(m, pad, levels, todo, off, Lq, Lk, BM, BN, W) -> torch.Tensor:
    """Exact class of each tile in `todo` [T, 3] from per-row allowed-key counts (prefix sums).

    Row i's allowed keys: A = valid keys in [w_lo, i], w_lo = max(document start, i - W + 1)
    (causal, windowed), plus, per key modality k, the keys of modality k in its segment if the
    policy has (mod[i], k) and in its group if the group policy has it. Those runs and [w_lo, i]
    all contain i, so for each k their union is one interval U_k, and the count in a tile [a, e)
    is |A| + sum over such k of (|U_k| - |A|) restricted to modality k: interval counts only."""
    dev = m.device
    valid = m[:, DOC] >= 0
    pos = torch.arange(Lk, device=dev).expand_as(valid)
    kmod = m[:, KMOD]
    run_bounds, bits_any = [], 0
    for run_f, bits_f in levels:
        run = m[:, run_f]
        run_bounds.append((_per_run(run, torch.where(valid, pos, Lk), "amin", Lk),
                           _per_run(run, torch.where(valid, pos, -1), "amax", -1), bits_f))
        bits_any |= int(_or_reduce(torch.where(valid, m[:, bits_f], 0).flatten()[None])[0])
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
        i = off + rows.clamp(max=Lq - 1)  # absolute positions
        bi = b[:, None].expand_as(i)
        ok = (rows < Lq) & valid[bi, i]
        w_lo = m[bi, KV_LO, i]
        if W is not None:
            w_lo = torch.maximum(w_lo, i - W + 1)
        a = (nb * BN)[:, None]
        e = torch.clamp(a + BN, max=Lk)
        base = bi * stride

        def span(cum, x, y):  # count in [x, y) of the prefix sums `cum` (flat), 0 when empty
            x, y = x.clamp(0, Lk), y.clamp(0, Lk)
            y = torch.maximum(x, y)
            return cum[base + y] - cum[base + x]

        # A: valid keys in [max(a, w_lo), min(e, i + 1))
        x, y = torch.maximum(a, w_lo), torch.minimum(e, i + 1)
        n_ok = (y - x).clamp(min=0) - span(flat_pad, x, y)
        row_bounds = [(lo[bi, i], hi[bi, i], m[bi, bits_f, i]) for lo, hi, bits_f in run_bounds]
        for k, cum in counts.items():
            u_lo, u_hi, some = w_lo, i, torch.zeros_like(ok)
            for lo, hi, bits in row_bounds:
                has = ((bits >> k) & 1) != 0
                u_lo = torch.where(has, torch.minimum(u_lo, lo), u_lo)
                u_hi = torch.where(has, torch.maximum(u_hi, hi), u_hi)
                some = some | has
            extra = span(cum, torch.maximum(a, u_lo), torch.minimum(e, u_hi + 1)) - span(cum, x, y)
            n_ok = n_ok + torch.where(some, extra, 0)
        n_ok = torch.where(ok, n_ok, 0)
        full = (n_ok == BN).all(-1)
        out[t0:t0 + step] = torch.where(full, FULL, torch.where(n_ok.sum(-1) > 0, PARTIAL, EMPTY)).to(torch.int8)
    return out


def _ordered(dense: torch.Tensor):
    """(num_blocks [B, 1, R], indices [B, 1, R, C]) of a 0/1 matrix [B, R, C], in `create_block_mask`'s
    order (a stable descending argsort): present blocks ascending, then the absent ones ascending.
    Computed by ranks and one scatter, O(R * C)."""
    d = dense.to(torch.int32).contiguous()
    present = d.cumsum(-1, dtype=torch.int32)
    num = present[..., -1:]
    cols = torch.arange(d.shape[-1], device=d.device, dtype=torch.int32).expand_as(d)
    rank = torch.where(d != 0, present - 1, num + cols - present)  # absent: num + (absent before it)
    idx = torch.empty_like(d).scatter_(-1, rank.long(), cols)
    return num[..., 0][:, None].contiguous(), idx[:, None]


def mask_mod(mask: MMAMask, q_len: Optional[int] = None, window: Optional[int] = None):
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` reading `mask`'s O(L) fields (bottom-right
    aligned for ``q_len < Lk``): the contract for the pairs inside partial tiles."""
    W = _check_window(window)
    off = mask.query_offset(q_len)
    doc, seg, kmod, qbits = (mask.meta[:, f].contiguous() for f in (DOC, SEG, KMOD, QBITS))
    grp, gbits = (mask.meta[:, f].contiguous() for f in (GRP, GBITS)) if mask.has_groups else (None, None)

    def mma_mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + off
        qd, km = doc[b, i], kmod[b, kv_idx]
        near = kv_idx <= i
        if W is not None:
            near = near & (i - kv_idx < W)
        look = (seg[b, i] == seg[b, kv_idx]) & (((qbits[b, i] >> km) & 1) != 0)
        if grp is not None:
            look = look | ((grp[b, i] == grp[b, kv_idx]) & (((gbits[b, i] >> km) & 1) != 0))
        return (qd >= 0) & (qd == doc[b, kv_idx]) & (near | look)

    return mma_mask_mod


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


@torch.compiler.disable
def cached_block_mask(mask: MMAMask, q_len: int, block_size: BlockSize = 128, window: Optional[int] = None):
    """`to_block_mask`, built once per (mask, q_len, block_size, window) and reused by every layer.
    Not traced by torch.compile: inside a compiled model the build runs eagerly (host syncs)."""
    per_mask = _CACHE.setdefault(mask, {})
    key = (q_len, _block_sizes(block_size), _check_window(window))
    if key not in per_mask:
        per_mask[key] = to_block_mask(mask, block_size, q_len, window)
    return per_mask[key]
