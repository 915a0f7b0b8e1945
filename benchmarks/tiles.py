"""`python -m benchmarks --suite tiles`: exact tile accounting on CPU, no GPU and no kernel run needed.

For each layout, length and autotuned tile shape: how many tiles the forward and dQ kernels (query side)
and the dK/dV kernel (key side) visit per head, split into plain (no mask arithmetic) and masked tiles,
against the minimum (tiles holding at least one allowed pair), and at 16K against the block count of
FlexAttention's `create_block_mask` at the forward's 128x64 tile (one build per case: it takes
most of a minute at 16K on CPU, and ~400 s at 128K, so it is not run there); plus mask build time, `MMAMask` against
`create_block_mask`.

The visit counts replicate the kernels' own range logic (`_key_block_ranges`, `_lookahead_split`,
`_next_look_block`, `_query_block_ranges` in `mma_kernels/ops/triton_kernels.py`) vectorised in torch; `tests/test_tiles_suite.py` checks the replica
against the kernels' helpers run in the interpreter, and the minimum against the dense mask.
The minimum is counted exactly with prefix sums, O(L / block) per tile row, never an L x L tensor.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Dict, List, Tuple

import torch

from mma_kernels.mask import DOC, GBITS, KMOD, KV_HI, KV_LO, LA_LO, MOD_NEXT, Q_HI, Q_LO, QBITS, SEG, NUM_FIELDS, MMAMask


FLEX_SHAPE = (128, 64)  # the tile FlexAttention's BlockMask is built at (the forward's headline tile)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _per_block(meta: torch.Tensor, lo_field: int, hi_field: int, start: int, n_blocks: int, block: int,
               limit: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A (lo, hi) pair of fields for positions ``start + [0, n_blocks * block)`` laid out [B, n_blocks, block];
    positions past ``limit`` read as the kernels' out-of-range values (Lk, -1)."""
    Lk = meta.shape[-1]
    pos = torch.arange(n_blocks * block).view(n_blocks, block)
    ok = pos < limit
    idx = (start + pos.clamp(max=limit - 1)).view(-1)
    lo = torch.where(ok, meta[:, lo_field, idx].view(-1, n_blocks, block), Lk)
    hi = torch.where(ok, meta[:, hi_field, idx].view(-1, n_blocks, block), -1)
    return lo, hi


def query_side_ranges(mask: MMAMask, Lq: int, BM: int, BN: int) -> Tuple[torch.Tensor, ...]:
    """`_key_block_ranges` for every query row block: (n_lo, f_lo, f_hi, n_hi), each int64 [B, nqb]."""
    meta, padcum = mask.meta.long(), mask.padcum.long()
    Lk = meta.shape[-1]
    off = Lk - Lq
    nqb = _cdiv(Lq, BM)
    kv_lo, kv_hi = _per_block(meta, KV_LO, KV_HI, off, nqb, BM, Lq)
    valid = kv_hi >= 0
    lo, hi = kv_lo.amin(-1), kv_hi.amax(-1)
    any_valid = hi >= 0
    n_lo = torch.where(any_valid, lo // BN, 0)
    n_hi = torch.where(any_valid, hi // BN + 1, 0)
    lo_max = torch.where(valid, kv_lo, 0).amax(-1)
    f_lo = (lo_max + BN - 1) // BN
    row_start = torch.arange(nqb) * BM
    f_hi = ((row_start + off + 1) // BN).expand_as(f_lo)
    a = (f_lo * BN).clamp(max=Lk)
    b = (f_hi * BN).clamp(max=Lk)
    pads = padcum.gather(1, b) - padcum.gather(1, a)
    full = any_valid & (f_lo < f_hi) & (pads == 0)
    return n_lo, torch.where(full, f_lo, n_hi), torch.where(full, f_hi, n_hi), n_hi


def _row_fields(mask: MMAMask, Lq: int, BM: int, field: int, other: int) -> torch.Tensor:
    """A per-row field of the query rows laid out [B, nqb, BM]; rows past Lq read `other`."""
    meta = mask.meta.long()
    off = meta.shape[-1] - Lq
    nqb = _cdiv(Lq, BM)
    rows = torch.arange(nqb * BM).view(nqb, BM)
    idx = (off + rows.clamp(max=Lq - 1)).view(-1)
    return torch.where(rows < Lq, meta[:, field, idx].view(-1, nqb, BM), other)


def lookahead_split(mask: MMAMask, Lq: int, BM: int, BN: int, ranges) -> Tuple[torch.Tensor, ...]:
    """`_lookahead_split` on `query_side_ranges`: the forward's and dQ's four loop bounds
    (n_lo, f_lo, f_hi, c_hi, a_lo, n_hi): masked [n_lo, f_lo), plain [f_lo, f_hi), masked [f_hi, c_hi),
    masked [a_lo, n_hi); key blocks [c_hi, a_lo) are skipped."""
    n_lo, f_lo, f_hi, n_hi = ranges
    Lk = mask.seq_len
    off = Lk - Lq
    nqb = _cdiv(Lq, BM)
    la = _row_fields(mask, Lq, BM, LA_LO, Lk).amin(-1)
    last = (torch.arange(nqb) * BM + BM).clamp(max=Lq) - 1 + off
    c_hi = torch.maximum(torch.minimum(last // BN + 1, n_hi), n_lo)
    a_lo = torch.where(la < Lk, torch.maximum(la, last + 1) // BN, n_hi)
    a_lo = torch.minimum(torch.maximum(a_lo, c_hi), n_hi)
    d_lo = torch.minimum(torch.maximum((torch.arange(nqb) * BM + off + 1) // BN, n_lo), c_hi)
    full = f_lo < f_hi
    f_lo, f_hi = torch.where(full, torch.minimum(f_lo, c_hi), d_lo), torch.where(full, torch.minimum(f_hi, c_hi), d_lo)
    return n_lo, f_lo, f_hi, c_hi, a_lo, n_hi


def look_tiles(mask: MMAMask, Lq: int, BM: int, BN: int, split) -> torch.Tensor:
    """Tiles the look-ahead loop (`_fwd_look_tiles`, `_dq_look_tiles`) runs per query row block, int64 [B, nqb]:
    from a_lo to n_hi, hopping with `_next_look_block` over runs of modalities no row of the block looks at."""
    _, _, _, _, a_lo, n_hi = split
    meta = mask.meta.long()
    bits = _row_fields(mask, Lq, BM, QBITS, 0)
    if mask.has_groups:
        bits = bits | _row_fields(mask, Lq, BM, GBITS, 0)
    k = torch.arange(31)
    bits = ((((bits[..., None] >> k) & 1).amax(-2)) << k).sum(-1)  # OR over the block's rows

    def nxt(n):
        p = (torch.minimum(n, n_hi - 1).clamp(min=0) * BN)
        mod, run_next = meta[:, KMOD].gather(1, p), meta[:, MOD_NEXT].gather(1, p)
        seen = ((bits >> mod) & 1) != 0
        return torch.where((n >= n_hi) | seen, n, run_next // BN)

    n = nxt(a_lo)
    count = torch.zeros_like(n)
    while bool((n < n_hi).any()):
        live = n < n_hi
        count += live.long()
        n = torch.where(live, nxt(n + 1), n)
    return count


def diagonal_kinds(mask: MMAMask, Lq: int, BM: int, BN: int, split) -> torch.Tensor:
    """`_diagonal_kind` for every query row block, int64 [B, nqb]: which form of the rule the diagonal tiles
    [f_hi, c_hi) run with. Keys inside [0, Lk) with no padding among them: 3 no row looks ahead and every row's
    document starts at or before the tiles (inside), 2 no row looks ahead, 1 inside with look-ahead; 0 any
    other (or the kernels' general rule: groups, a policy that is not uniform)."""
    _, _, f_hi, c_hi, _, _ = split
    Lk = mask.seq_len
    padcum = mask.padcum.long()
    a = (f_hi * BN).clamp(max=Lk)
    b = torch.maximum((c_hi * BN).clamp(max=Lk), a)
    pads = padcum.gather(1, b) - padcum.gather(1, a)
    doc = _row_fields(mask, Lq, BM, DOC, -2)
    lo = torch.where(doc >= 0, _row_fields(mask, Lq, BM, KV_LO, Lk), 0).amax(-1)
    inside = lo <= f_hi * BN
    nopad = (pads == 0) & (c_hi * BN <= Lk)
    bits = _row_fields(mask, Lq, BM, QBITS, 0)
    no_look = (bits != 0).sum(-1) == 0
    kind = torch.where(nopad, torch.where(no_look, torch.where(inside, 3, 2), torch.where(inside, 1, 0)), 0)
    if mask.meta.shape[1] > NUM_FIELDS:  # the kernels' general rule: groups, or a policy that is not uniform
        kind = torch.zeros_like(kind)
    return kind


def key_side_ranges(mask: MMAMask, Lq: int, BM: int, BN: int) -> Tuple[torch.Tensor, ...]:
    """`_query_block_ranges` for every key block: (m_lo, f_lo, f_hi, m_hi), each int64 [B, nkb]."""
    meta, padcum = mask.meta.long(), mask.padcum.long()
    Lk = meta.shape[-1]
    off = Lk - Lq
    nkb = _cdiv(Lk, BN)
    q_lo, q_hi = _per_block(meta, Q_LO, Q_HI, 0, nkb, BN, Lk)
    valid = q_hi >= 0
    r_lo = (q_lo.amin(-1) - off).clamp(min=0)
    r_hi = (q_hi.amax(-1) - off).clamp(max=Lq - 1)
    nonempty = r_hi >= r_lo
    m_lo = torch.where(nonempty, r_lo // BM, 0)
    m_hi = torch.where(nonempty, r_hi // BM + 1, 0)
    key_start = torch.arange(nkb) * BN
    first_row = (key_start + BN - 1 - off).clamp(min=0)
    f_lo = ((first_row + BM - 1) // BM).expand_as(m_lo)
    end_row = torch.where(valid, q_hi, Lk).amin(-1) - off + 1
    f_hi = end_row.clamp(min=0) // BM
    kend = (key_start + BN).clamp(max=Lk).expand_as(m_lo)
    pads = padcum.gather(1, kend) - padcum.gather(1, key_start.expand_as(m_lo))
    # and free of padding queries
    ra = (torch.maximum(f_lo, m_lo) * BM).clamp(max=Lq) + off
    rb = (torch.minimum(f_hi, m_hi) * BM).clamp(max=Lq) + off
    row_pads = torch.where(rb > ra, padcum.gather(1, torch.maximum(rb, ra)) - padcum.gather(1, ra), 0)
    full = nonempty & (key_start + BN <= Lk) & (pads == 0) & (row_pads == 0) & (f_lo < f_hi)
    f_lo = torch.where(full, torch.minimum(torch.maximum(f_lo, m_lo), m_hi), m_hi)
    f_hi = torch.where(full, torch.minimum(f_hi, m_hi), m_hi)
    return m_lo, f_lo, torch.maximum(f_hi, f_lo), m_hi


def loop_counts(lo, f_lo, f_hi, hi, look=None) -> Tuple[List[int], int]:
    """Tiles per masked loop, in the kernels' code order, and plain tiles: masked [lo, f_lo) (the forward's
    and dQ's before-diagonal loop), plain [f_lo, f_hi), masked [f_hi, hi), plus `look` masked tiles per block
    (the forward's and dQ's look-ahead loop, `look_tiles`)."""
    n = lambda a, b: int((b - a).clamp(min=0).sum())  # noqa: E731  (a Python range(a, b) runs max(0, b - a) times)
    masked = [n(lo, f_lo), n(f_hi, hi)] + ([int(look.sum())] if look is not None else [])
    return masked, n(f_lo, f_hi)


# the masked loops by the rule form each evaluates (the `# rule:` marks of `mma_kernels/ops/mask_rules.py`, by which
# `python -m benchmarks.static` names the loops it finds): the forward's and dQ's (the diagonal tiles by
# `diagonal_kinds` 3, 2, 1, 0) and the dK/dV kernel's (rows [m_lo, f_lo), then [f_hi, m_hi))
QUERY_LOOPS = ("before", "causal", "span-causal", "look", "span", "look-ahead")
KEY_LOOPS = ("key-span", "before")


def query_loop_counts(mask: MMAMask, Lq: int, BM: int, BN: int, split, masked_n: int = 0) -> Tuple[List[int], int]:
    """The forward's and dQ's tiles per masked loop (`QUERY_LOOPS`: the diagonal tiles [f_hi, c_hi) split by
    `diagonal_kinds`), and plain tiles. `masked_n` < BN (`triton_ops.MASKED_N`): the masked loops walk the same
    keys in tiles of that width, cut off at Lk, the look-ahead loop hopping at that width (`_fwd_row_block`):
    their counts are of those narrower tiles."""
    n_lo, f_lo, f_hi, c_hi, a_lo, n_hi = split
    kind = diagonal_kinds(mask, Lq, BM, BN, split)
    if masked_n and masked_n < BN:
        R, MN = BN // masked_n, masked_n
        end = _cdiv(mask.seq_len, MN)
        narrow = (n_lo * R, f_lo * R, f_hi * R, (c_hi * R).clamp(max=end), a_lo * R, (n_hi * R).clamp(max=end))
        (before, diag, look), _ = loop_counts(narrow[0], narrow[1], narrow[2], narrow[3],
                                              look_tiles(mask, Lq, BM, MN, narrow))
        per = (narrow[3] - narrow[2]).clamp(min=0)
        plain = int((f_hi - f_lo).clamp(min=0).sum())
    else:
        (before, diag, look), plain = loop_counts(n_lo, f_lo, f_hi, c_hi, look_tiles(mask, Lq, BM, BN, split))
        per = (c_hi - f_hi).clamp(min=0)
    by = [int(per[kind == k].sum()) for k in (3, 2, 1, 0)]
    assert sum(by) == diag
    return [before] + by + [look], plain


def key_loop_counts(Lq: int, BM: int, ranges, masked_m: int) -> List[int]:
    """The dK/dV kernel's tiles per masked loop (`KEY_LOOPS`) when its row tile is taller than `masked_m`
    (`triton_ops.MASKED_M`): the masked loops walk the same rows in tiles of that height, the last one cut off
    at Lq (`mma_bwd_dkdv_kernel`)."""
    m_lo, f_lo, f_hi, m_hi = ranges
    R = BM // masked_m
    masked, _ = loop_counts(m_lo * R, f_lo * R, f_hi * R, (m_hi * R).clamp(max=_cdiv(Lq, masked_m)))
    return masked


def loop_tiles(lo, f_lo, f_hi, hi, look=None) -> Tuple[int, int]:
    """(masked, plain) tiles of the kernels' loops (`loop_counts`, masked loops summed)."""
    masked, plain = loop_counts(lo, f_lo, f_hi, hi, look)
    return sum(masked), plain


def tiles_with_work(mask: MMAMask, Lq: int, BM: int, BN: int) -> torch.Tensor:
    """Bool [B, nqb, nkb]: the tile holds at least one allowed (query, key) pair. Exact, O(L * L / (BM * BN)) bools.

    Causal part: query p sees the valid keys of [doc start, p]; each row adds its block interval to a
    difference array of its tile row; a covered block counts if it holds a valid key (the interval's end
    blocks always do). Look-ahead part: the rows of one tile row, segment and look-ahead bits see, of each
    modality in the bits, the keys in (first such row, its segment's last such key]; blocks of that
    interval count when a prefix count of the modality says they hold one.
    """
    meta, padcum = mask.meta.long(), mask.padcum.long()
    B, _, Lk = meta.shape
    off = Lk - Lq
    nqb, nkb = _cdiv(Lq, BM), _cdiv(Lk, BN)
    starts = torch.arange(nkb) * BN
    ends = (starts + BN).clamp(max=Lk)
    blk_valid = (ends - starts) - (padcum[:, ends] - padcum[:, starts]) > 0  # [B, nkb]

    p = torch.arange(Lq) + off
    qvalid = meta[:, DOC, p] >= 0
    m_of = (torch.arange(Lq) // BM).expand(B, Lq)
    kv_lo = meta[:, KV_LO, p].clamp(max=Lk - 1)
    width = nkb + 1
    base = torch.arange(B)[:, None] * (nqb * width) + m_of * width
    diff = torch.zeros(B * nqb * width, dtype=torch.int32)
    w = qvalid.int().view(-1)
    diff.scatter_add_(0, (base + kv_lo // BN).view(-1), w)
    diff.scatter_add_(0, (base + p // BN + 1).view(-1), -w)
    allowed = (diff.view(B, nqb, width).cumsum(-1)[..., :nkb] > 0) & blk_valid[:, None, :]

    kv_hi, bits, seg = meta[:, KV_HI, p], meta[:, QBITS, p], meta[:, SEG, p]
    ahead = qvalid & (bits != 0) & (kv_hi > p)
    if ahead.any():
        bi, qi = ahead.nonzero(as_tuple=True)
        keys = torch.stack([bi, m_of[bi, qi], seg[bi, qi], bits[bi, qi]], 1)
        groups, inv = torch.unique(keys, dim=0, return_inverse=True)
        G = groups.shape[0]
        first = torch.full((G,), Lk, dtype=torch.long).scatter_reduce(0, inv, p[qi], "amin")
        last = torch.full((G,), -1, dtype=torch.long).scatter_reduce(0, inv, kv_hi[bi, qi], "amax")
        gb, gm, gbits = groups[:, 0], groups[:, 1], groups[:, 3]
        kvalid = meta[:, DOC] >= 0
        for k in torch.unique(meta[:, KMOD][kvalid]).tolist():
            sel = ((gbits >> k) & 1) != 0
            if not sel.any():
                continue
            lo, hi, sb, sm = first[sel] + 1, last[sel], gb[sel], gm[sel]
            cnt = torch.cat([torch.zeros(B, 1, dtype=torch.long), (kvalid & (meta[:, KMOD] == k)).long().cumsum(1)], 1)
            b0, b1 = lo // BN, hi // BN
            lens = (b1 - b0 + 1).clamp(min=0)
            rep = torch.repeat_interleave(torch.arange(len(lo)), lens)
            offs = torch.arange(len(rep)) - torch.repeat_interleave(lens.cumsum(0) - lens, lens)
            n = b0[rep] + offs
            s = torch.maximum(lo[rep], n * BN)
            e = torch.minimum(hi[rep], n * BN + BN - 1)
            has = cnt[sb[rep], e + 1] - cnt[sb[rep], s] > 0
            allowed[sb[rep][has], sm[rep][has], n[has]] = True
    return allowed


def flex_blocks(layout, BM: int, BN: int) -> Tuple[int, int, float]:
    """(blocks, full blocks, build seconds) of FlexAttention's BlockMask for the contract's mask_mod."""
    from torch.nn.attention.flex_attention import create_block_mask

    from mma_kernels.reference import flex_mask_mod

    B, L = layout.modality_ids.shape
    mm = flex_mask_mod(layout.modality_ids, layout.segment_ids, layout.document_ids)
    t = time.perf_counter()
    bm = create_block_mask(mm, B, None, L, L, device="cpu", BLOCK_SIZE=(BM, BN), _compile=False)
    dt = time.perf_counter() - t
    full = int(bm.full_kv_num_blocks.sum()) if bm.full_kv_num_blocks is not None else 0
    return int(bm.kv_num_blocks.sum()) + full, full, dt


def tile_shapes() -> Dict[str, List[Tuple[int, int]]]:
    """Distinct (BLOCK_M, BLOCK_N) of each kernel's autotune list."""
    from mma_kernels.ops import triton_ops

    out = {}
    for kind in ("fwd", "dq", "dkdv"):
        seen = []
        for c in triton_ops._tuned[kind].configs:
            s = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"])
            if s not in seen:
                seen.append(s)
        out[kind] = seen
    return out


def count_case(layout, seqlen: int, flex_shape=None) -> Tuple[List[Dict], Dict]:
    """Records per kernel and tile shape, and the FlexAttention build ({} unless `flex_shape` is given)."""
    from mma_kernels.ops import triton_ops

    mask = MMAMask(layout.modality_ids, layout.segment_ids, layout.document_ids)
    B = layout.modality_ids.shape[0]
    recs, minimum, flexed = [], {}, {}
    if flex_shape:  # one create_block_mask per case: it takes most of a minute at 16K on CPU
        flexed[tuple(flex_shape)] = flex_blocks(layout, *flex_shape)
    for kind, shapes in tile_shapes().items():
        for BM, BN in shapes:
            if (BM, BN) not in minimum:
                minimum[(BM, BN)] = int(tiles_with_work(mask, seqlen, BM, BN).sum())
            if kind == "dkdv":
                ranges = key_side_ranges(mask, seqlen, BM, BN)
                loops, plain = loop_counts(*ranges)
            else:
                split = lookahead_split(mask, seqlen, BM, BN, query_side_ranges(mask, seqlen, BM, BN))
                loops, plain = query_loop_counts(mask, seqlen, BM, BN, split)
            masked = sum(loops)
            # a 128-wide key tile's masked loops run narrower tiles (`triton_ops.MASKED_N`): counted at that width
            # for the cost model; `visited`, `masked` and the excess stay in tiles of BN keys
            narrow = triton_ops.MASKED_N if kind != "dkdv" and 0 < triton_ops.MASKED_N < BN else BN
            if narrow < BN:
                loops, _ = query_loop_counts(mask, seqlen, BM, BN, split, narrow)
            # likewise a 64-row dK/dV tile's masked loops run tiles of `triton_ops.MASKED_M` rows
            short = triton_ops.MASKED_M if kind == "dkdv" and 0 < triton_ops.MASKED_M < BM else BM
            if short < BM:
                loops = key_loop_counts(seqlen, BM, ranges, short)
            mn = minimum[(BM, BN)]
            rec = dict(layout=layout.name, seqlen=seqlen, batch=B, kernel=kind, block_m=BM, block_n=BN,
                       visited=masked + plain, plain=plain, masked=masked, masked_loops=loops, masked_block_n=narrow,
                       masked_block_m=short,
                       loop_rules=list(KEY_LOOPS if kind == "dkdv" else QUERY_LOOPS), minimum=mn,
                       excess_pct=round(100 * (masked + plain - mn) / mn, 2) if mn else None,
                       total_tiles=B * _cdiv(seqlen, BM) * _cdiv(seqlen, BN))
            if (BM, BN) in flexed:
                rec.update(flex_blocks=flexed[(BM, BN)][0], flex_full_blocks=flexed[(BM, BN)][1])
            recs.append(rec)
    build = {}
    if flexed:
        (BM, BN), (_, _, secs) = next(iter(flexed.items()))
        build = dict(create_block_mask_ms=round(1e3 * secs, 1), create_block_mask_block=f"{BM}x{BN}")
    return recs, build


def build_times(layout, reps: int = 3) -> Dict:
    """Median `MMAMask` build time (one warm-up call excluded)."""
    ids = (layout.modality_ids, layout.segment_ids, layout.document_ids)
    MMAMask(*ids)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        MMAMask(*ids)
        ts.append(time.perf_counter() - t)
    return dict(layout=layout.name, seqlen=layout.modality_ids.shape[1], mmamask_ms=round(1e3 * statistics.median(ts), 2))


def summary_table(recs: List[Dict]) -> List[str]:
    head = ["layout", "L", "kernel", "tile", "visited", "plain", "masked", "minimum", "excess %", "flex blocks"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in recs:
        out.append(f"| {r['layout']} | {r['seqlen'] // 1024}K | {r['kernel']} | {r['block_m']}x{r['block_n']} | "
                   f"{r['visited']} | {r['plain']} | {r['masked']} | {r['minimum']} | {r['excess_pct']} | "
                   f"{r.get('flex_blocks', '-')} |")
    return out


def plot(recs: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("fwd", "dq", "dkdv")
    lens = sorted({r["seqlen"] for r in recs})
    layouts = list(dict.fromkeys(r["layout"] for r in recs))
    all_shapes = list(dict.fromkeys((r["block_m"], r["block_n"]) for r in recs))
    color = {sh: f"C{i}" for i, sh in enumerate(all_shapes)}  # one colour per tile shape in every panel
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, kind in zip(axes, kinds):
        rs = [r for r in recs if r["kernel"] == kind and r["seqlen"] == lens[0]]
        shapes = list(dict.fromkeys((r["block_m"], r["block_n"]) for r in rs))
        w = 0.8 / max(len(shapes), 1)
        for j, sh in enumerate(shapes):
            ys = [next((r["excess_pct"] for r in rs if r["layout"] == lay and (r["block_m"], r["block_n"]) == sh), 0)
                  for lay in layouts]
            ax.bar([i + (j - (len(shapes) - 1) / 2) * w for i in range(len(layouts))], ys, w, color=color[sh])
        ax.set_xticks(range(len(layouts)), layouts, rotation=20)
        ax.set_title(f"{kind}: tiles visited over the minimum, L={lens[0] // 1024}K", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [Patch(color=color[sh], label=f"{sh[0]}x{sh[1]}") for sh in all_shapes]
    axes[0].set_ylabel("extra tiles visited (% of minimum)")
    axes[-1].legend(handles=handles, title="tile (rows x keys)", fontsize=9, loc="upper left",
                    bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _layout(name: str, batch: int, L: int):
    """A benchmark layout (`benchmarks.layouts`), or one of `benchmarks.sp_balance`'s single long documents:
    ``video`` (64-frame videos with look-ahead questions) and ``causal``."""
    from .layouts import Layout, make_layout

    if name in ("video", "causal"):
        from .sp_balance import layout_ids

        return Layout(name, *layout_ids(name, L, batch))
    return make_layout(name, batch, L, seed=0)


def run(seqlens: List[int], layouts: List[str], out_dir: str, flex_upto: int = 16384, batch: int = 1) -> int:
    from .records import environment

    os.makedirs(out_dir, exist_ok=True)
    env = environment(torch.device("cpu"))
    recs, builds = [], []
    t0 = time.time()
    for L in seqlens:
        for name in layouts:
            lay = _layout(name, batch, L)
            t = time.time()
            rs, flex_build = count_case(lay, L, FLEX_SHAPE if L <= flex_upto else None)
            builds.append(dict(env, **build_times(lay), **flex_build))
            recs += [dict(env, **r) for r in rs]
            print(f"tiles: {name} L={L}: {time.time() - t:.1f} s", file=sys.stderr, flush=True)
    with open(os.path.join(out_dir, "tiles.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    with open(os.path.join(out_dir, "mask_build.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in builds)
    from .records import write_csv

    write_csv(os.path.join(out_dir, "tiles.csv"), recs)
    table = summary_table(recs)
    bt = ["| layout | L | MMAMask ms | create_block_mask ms (block) |", "|---|---|---|---|"]
    bt += [f"| {b['layout']} | {b['seqlen'] // 1024}K | {b['mmamask_ms']} | "
           + (f"{b['create_block_mask_ms']} ({b['create_block_mask_block']}) |" if "create_block_mask_ms" in b
              else "not run (over --flex-upto) |") for b in builds]
    with open(os.path.join(out_dir, "tiles.md"), "w", encoding="utf-8") as f:
        f.write(f"# Tiles visited per head vs the minimum\n\n{env['device']}, torch {env['torch']}, triton "
                f"{env['triton']}, commit `{env['git_commit']}`, {env['date']}. Batch {batch}. `visited` = plain + "
                "masked tiles the kernel's loops run; `minimum` = tiles holding at least one allowed pair; "
                "`flex blocks` = FlexAttention BlockMask blocks (partial + full) at the same tile shape.\n\n"
                + "\n".join(table) + "\n\n## Mask build time (CPU, 1 thread)\n\n" + "\n".join(bt) + "\n")
    try:
        plot(recs, os.path.join(out_dir, "tiles.png"))
    except ImportError as exc:
        print(f"no plot ({exc}); pip install mma-kernels[bench]", file=sys.stderr)
    print("\n".join(table + [""] + bt))
    print(f"\n{len(recs)} records -> {out_dir}/tiles.jsonl, tiles.csv, tiles.md, tiles.png in {time.time() - t0:.0f} s")
    return 0
