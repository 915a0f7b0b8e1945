"""The dK/dV kernel (FlashAttention-2 backward, key side): one program per key block and KV head, walking the
query blocks of `_query_block_ranges` for every query head of its GQA group."""
import triton
import triton.language as tl

from .tile_io import KEY_ONLY_ARGS, _cast, _mm, _tile_slices
from .mask_rules import (BIG, _allowed, _allowed_before, _allowed_key_span, _load_query_fields, _load_key_fields,
                         _look_bits)
from .block_ranges import _query_block_ranges


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, linv_base, delta_base, sqm, sdm, meta_b, smf, srs,
                key_start, m_lo, m_hi, Lq, Lk, D, qk_scale, window, zero_single, off,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
                DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                SPLIT_STATS: tl.constexpr, BEFORE: tl.constexpr = False, TMA: tl.constexpr = 0, qd=None, dod=None):
    """Row blocks [m_lo, m_hi) of one key block, in the transposed orientation ([BLOCK_N keys, BLOCK_M rows]).
    Masked loops: BEFORE (rows at or after every key: the loop above the fully allowed rows, see
    `_query_block_ranges`: in that case only when the block has fully allowed rows) needs only the document
    bound; else plain MMA evaluates `_allowed_key_span` (operands broadcast [1, M] x [N, 1]), groups or a
    window `_allowed`. TMA (`triton_ops._tma_level`): q and dO tiles through the descriptors qd / dod in the
    plain loop (its rows hold no padding query; rows past Lq read 0), and in masked loops too at level 2 (no
    padding anywhere); else masked pointer loads, which read padding rows as 0."""
    offs_d = tl.arange(0, BLOCK_D)
    if MASKED:  # the keys' fields are loaded here, live only across a masked loop (not the group loop)
        offs_n = tl.arange(0, BLOCK_N)
        k_pos = key_start + offs_n
        if BEFORE:
            k_doc = tl.load(meta_b + k_pos, mask=k_pos < Lk, other=-1)
        elif not (HAS_GROUPS or HAS_WINDOW):  # KMOD, and the key's position (BIG for padding and past Lk)
            k_mod = tl.load(meta_b + 2 * smf + k_pos, mask=k_pos < Lk, other=31)
            k_eff = tl.where(k_mod != 31, k_pos, BIG)
        else:
            k_doc, k_seg, k_mod, k_grp = _load_key_fields(meta_b, smf, k_pos, k_pos < Lk, HAS_GROUPS)
    for m in range(m_lo, m_hi):
        start = m * BLOCK_M
        offs_m = tl.arange(0, BLOCK_M)
        rows = start + offs_m
        row_ok = rows < Lq
        if MASKED:  # padding query rows (only ever in masked tiles) load as 0, whatever q/dO hold
            # bounded by the field stride, past Lk the fields are padding's (`triton_ops._kernel_fields`): with
            # off = Lk - Lq a multiple of 16 (0 in training) the loads stay 16-row vectors at any Lq
            f_ok = rows + off < smf
            if BEFORE or not (HAS_GROUPS or HAS_WINDOW):
                q_doc = tl.load(meta_b + rows + off, mask=f_ok, other=-2)
                q_doc = tl.where(q_doc < 0, -2, q_doc)
                if not BEFORE:  # `_allowed_key_span`'s LO, H (padding rows: any, their p is 0)
                    q_lo = tl.load(meta_b + 4 * smf + rows + off, mask=f_ok, other=0)
                    q_hi = tl.load(meta_b + 5 * smf + rows + off, mask=f_ok, other=0)
                    q_bits = tl.load(meta_b + 3 * smf + rows + off, mask=f_ok, other=0)
            else:
                q_doc, q_seg, q_bits, q_grp, q_gbits = _load_query_fields(meta_b, smf, rows + off, f_ok, HAS_GROUPS)
            row_ok = q_doc >= 0  # -2 past Lq: rows + off >= Lk
        if TMA == 2 or (TMA and not MASKED):
            q = qd.load([start, 0])
            do = dod.load([start, 0])
        else:
            tile_ok = row_ok[:, None] & (offs_d < D)[None, :]
            q = tl.load(q_base + start.to(tl.int64) * sqm + offs_m[:, None] * sqm + offs_d[None, :], mask=tile_ok,
                        other=0.0)
            do = tl.load(do_base + start.to(tl.int64) * sdm + offs_m[:, None] * sdm + offs_d[None, :], mask=tile_ok,
                         other=0.0)
        # plain tiles: bounded by the rows' stride (a multiple of 16, neutral values past Lq: `_row_stats`)
        stat_ok = row_ok if MASKED else rows < srs
        lse2 = tl.load(lse_base + rows, mask=stat_ok, other=float("inf"))
        delta = tl.load(delta_base + rows, mask=stat_ok, other=0.0)
        qkT = _mm(k, tl.trans(q), None, DOT_PREC, UPCAST) * qk_scale  # [BLOCK_N, BLOCK_M]
        if SPLIT_STATS:  # lse2 holds the row max: p = exp2(s - m) / l
            linv = tl.load(linv_base + rows, mask=stat_ok, other=0.0)
            pT = tl.math.exp2(qkT - lse2[None, :]) * linv[None, :]
        else:
            pT = tl.math.exp2(qkT - lse2[None, :])
        if MASKED:
            if BEFORE:
                ok = _allowed_before(k_doc[:, None], q_doc[None, :])
            elif not (HAS_GROUPS or HAS_WINDOW):
                # the tile's look-ahead bits (uniform policy: every row's are 0 or these) pick the keys looked at
                k_look = (_look_bits(q_bits, q_bits, False) >> k_mod) & 1
                ok = _allowed_key_span((rows + off)[None, :], q_lo[None, :], q_hi[None, :], k_eff[:, None],
                                       k_look[:, None])
            else:
                ok = _allowed((rows + off)[None, :], q_doc[None, :], q_seg[None, :], q_bits[None, :], q_grp[None, :],
                              q_gbits[None, :], k_pos[:, None], k_doc[:, None], k_seg[:, None], k_mod[:, None],
                              k_grp[:, None], window, HAS_GROUPS, HAS_WINDOW)
            pT = tl.where(ok, pT, 0.0)
        dv = _mm(_cast(pT, do.dtype, UPCAST), do, dv, DOT_PREC, UPCAST)
        dpT = _mm(v, tl.trans(do), None, DOT_PREC, UPCAST)
        if SPLIT_STATS:  # rows that see one key (l == 1): ds is exactly 0
            keep = tl.where((linv == 1.0) & (zero_single != 0), 0.0, 1.0)
            dsT = (pT * keep[None, :]) * (dpT - delta[None, :])
        else:
            dsT = pT * (dpT - delta[None, :])
        dk = _mm(_cast(dsT, q.dtype, UPCAST), q, dk, DOT_PREC, UPCAST)
    return dk, dv


@triton.jit
def _dkdv_tiles_at(dk, dv, k, v, q_base, do_base, lse_base, linv_base, delta_base, sqm, sdm, meta_b, smf, QPOS,
                   key_start, m_lo, m_hi, Lq, Lk, D, qk_scale, window, zero_single,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   SPLIT_STATS: tl.constexpr):
    """`_dkdv_tiles` for query rows at the positions QPOS[row] (HAS_QPOS): row blocks [m_lo, m_hi) of one key
    block, every tile masked with the general rule `_allowed` (the rows' positions need not be contiguous)."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    k_pos = key_start + offs_n
    k_doc, k_seg, k_mod, k_grp = _load_key_fields(meta_b, smf, k_pos, k_pos < Lk, HAS_GROUPS)
    for m in range(m_lo, m_hi):
        start = m * BLOCK_M
        offs_m = tl.arange(0, BLOCK_M)
        rows = start + offs_m
        row_ok = rows < Lq
        rpos = tl.load(QPOS + rows, mask=row_ok, other=0)
        q_doc, q_seg, q_bits, q_grp, q_gbits = _load_query_fields(meta_b, smf, rpos, row_ok, HAS_GROUPS)
        row_ok = row_ok & (q_doc >= 0)  # padding query rows load as 0, whatever q/dO hold
        tile_ok = row_ok[:, None] & (offs_d < D)[None, :]
        q = tl.load(q_base + start.to(tl.int64) * sqm + offs_m[:, None] * sqm + offs_d[None, :], mask=tile_ok, other=0.0)
        do = tl.load(do_base + start.to(tl.int64) * sdm + offs_m[:, None] * sdm + offs_d[None, :], mask=tile_ok, other=0.0)
        lse2 = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        qkT = _mm(k, tl.trans(q), None, DOT_PREC, UPCAST) * qk_scale  # [BLOCK_N, BLOCK_M]
        if SPLIT_STATS:
            linv = tl.load(linv_base + rows, mask=row_ok, other=0.0)
            pT = tl.math.exp2(qkT - lse2[None, :]) * linv[None, :]
        else:
            pT = tl.math.exp2(qkT - lse2[None, :])
        ok = _allowed(rpos[None, :], q_doc[None, :], q_seg[None, :], q_bits[None, :], q_grp[None, :],
                      q_gbits[None, :], k_pos[:, None], k_doc[:, None], k_seg[:, None], k_mod[:, None],
                      k_grp[:, None], window, HAS_GROUPS, HAS_WINDOW)
        pT = tl.where(ok, pT, 0.0)
        dv = _mm(_cast(pT, do.dtype, UPCAST), do, dv, DOT_PREC, UPCAST)
        dpT = _mm(v, tl.trans(do), None, DOT_PREC, UPCAST)
        if SPLIT_STATS:
            keep = tl.where((linv == 1.0) & (zero_single != 0), 0.0, 1.0)
            dsT = (pT * keep[None, :]) * (dpT - delta[None, :])
        else:
            dsT = pT * (dpT - delta[None, :])
        dk = _mm(_cast(dsT, q.dtype, UPCAST), q, dk, DOT_PREC, UPCAST)
    return dk, dv


@triton.jit(do_not_specialize=KEY_ONLY_ARGS)
def mma_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE2, LINV, DELTA, META, PADCUM, WIN,
                        sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm,
                        smb, smf, spb, swb, swf, srs, Hq, Hkv, Lq, Lk, D, GROUP, qk_scale, sm_scale, window, zero_single,
                        q_off, h_base, h_launch,
                        LQ_BUCKET, DOC_BUCKET, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr,
                        HAS_WINDOW: tl.constexpr, SPLIT_STATS: tl.constexpr, EXACT_DELTA: tl.constexpr,
                        EVEN_D: tl.constexpr = False, SPLIT_GROUP: tl.constexpr = False, QPOS=None,
                        HAS_QPOS: tl.constexpr = False, TMA: tl.constexpr = 0, MASKED_M: tl.constexpr = 0):
    """dK, dV for one block of keys of one KV head, summed over the GROUP query heads sharing it.

    MASKED_M (0: no limit): the tallest masked tile; a taller row tile (64x128) runs its masked loops in tiles
    of MASKED_M rows over the same rows, the plain loop at full height (`triton_ops.MASKED_M`: each per-row field
    of the rule takes 16 registers per thread in a 64-row tile, and the masked loops spill there).

    SPLIT_GROUP: one program per block of keys and *query* head instead (no loop over the group), for the
    h_launch query heads from h_base, writing that head's fp32 share into DK/DV shaped [B, h_launch, Lk, D];
    the launcher sums the GROUP shares (and launches again for the next heads, to bound that buffer). Without
    the group loop nothing is live across heads: this is what keeps the wgmma tiles spill-free under GQA
    (benchmarks/results/static/CHANGES.md, "dK/dV spills").

    HAS_QPOS: query row r sits at absolute position QPOS[r] (int32, increasing); QPOS[Lq:] holds per key, for
    each batch row, the first and last query row that may see it ([B, 2, Lk], from `Q_LO`/`Q_HI` by a search in
    the positions): the row blocks to visit. Those tiles all run masked (`_dkdv_tiles_at`)."""
    SUB_M: tl.constexpr = MASKED_M if (MASKED_M > 0 and MASKED_M < BLOCK_M) else BLOCK_M
    R: tl.constexpr = BLOCK_M // SUB_M
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    if SPLIT_GROUP:
        b = pid_bh // h_launch
        h0 = h_base + pid_bh % h_launch
        hk = h0 // GROUP
        heads = 1
    else:
        b = pid_bh // Hkv
        hk = pid_bh % Hkv
        h0 = hk * GROUP
        heads = GROUP
    key_start = pid_n * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_pos = key_start + offs_n
    key_ok = k_pos < Lk
    meta_b = META + b.to(tl.int64) * smb
    pad_b = PADCUM + b.to(tl.int64) * spb
    win_b = WIN + b.to(tl.int64) * swb
    if HAS_QPOS:
        rq_b = QPOS + Lq + b.to(tl.int64) * 2 * Lk
        m_lo = tl.min(tl.load(rq_b + k_pos, mask=key_ok, other=Lq), 0)
        m_hi = tl.max(tl.load(rq_b + Lk + k_pos, mask=key_ok, other=-1), 0)
        nonempty = m_hi >= m_lo
        m_hi = tl.where(nonempty, m_hi // SUB_M + 1, 0)  # in masked tiles of SUB_M rows
        m_lo = tl.where(nonempty, m_lo // SUB_M, 0)
    else:
        m_lo, f_lo, f_hi, m_hi = _query_block_ranges(meta_b, smf, pad_b, key_start, Lq, Lk, BLOCK_M, BLOCK_N,
                                                     win_b, swf, window, HAS_WINDOW)
        # the masked loops' ranges in tiles of SUB_M rows; the last one ends at the last row
        m_lo_s = m_lo * R
        f_lo_s = f_lo * R
        f_hi_s = f_hi * R
        m_hi_s = m_hi
        if R > 1:
            m_hi_s = tl.minimum(m_hi * R, tl.cdiv(Lq, SUB_M))
    # padding keys load as 0, whatever K/V hold
    k_doc = tl.load(meta_b + k_pos, mask=key_ok, other=-1)
    kv_ok = (key_ok & (k_doc >= 0))[:, None] & (offs_d < D)[None, :]
    k = tl.load(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + key_start.to(tl.int64) * skn
                + offs_n[:, None] * skn + offs_d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + key_start.to(tl.int64) * svn
                + offs_n[:, None] * svn + offs_d[None, :], mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # q / dO through descriptors only at level 2 (no padding: with padding the 32x128 tile spills a few bytes
    # before its loops), above a head-dim block of 64 (at 64 the GQA group loop rebuilds them per head and the
    # plain loop gains nothing: benchmarks/results/static/tma_sm90.md), and not with query positions
    USE_TMA: tl.constexpr = 2 * (TMA == 2) * (BLOCK_D > 64) * (not HAS_QPOS)
    for g in range(heads):
        h = h0 + g
        q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        do_base = DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        row_base = (b * Hq + h).to(tl.int64) * srs
        qd, dod, qds, dods = _tile_slices(q_base, do_base, Lq, D, sqm, sdm, BLOCK_M, SUB_M, BLOCK_D, USE_TMA)
        if HAS_QPOS:
            dk, dv = _dkdv_tiles_at(dk, dv, k, v, q_base, do_base, LSE2 + row_base, LINV + row_base,
                                    DELTA + row_base, sqm, sdm, meta_b, smf, QPOS, key_start, m_lo, m_hi, Lq, Lk, D,
                                    qk_scale, window, zero_single, SUB_M, BLOCK_N, BLOCK_D, DOT_PREC, UPCAST,
                                    HAS_GROUPS, HAS_WINDOW, SPLIT_STATS)
        else:
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE2 + row_base, LINV + row_base, DELTA + row_base,
                                 sqm, sdm, meta_b, smf, srs,
                                 key_start, m_lo_s, f_lo_s, Lq, Lk, D, qk_scale, window, zero_single, q_off,
                                 SUB_M, BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                                 TMA=USE_TMA, qd=qds, dod=dods)
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE2 + row_base, LINV + row_base, DELTA + row_base,
                                 sqm, sdm, meta_b, smf, srs,
                                 key_start, f_lo, f_hi, Lq, Lk, D, qk_scale, window, zero_single, q_off,
                                 BLOCK_M, BLOCK_N, BLOCK_D, False, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                                 TMA=USE_TMA, qd=qd, dod=dod)
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE2 + row_base, LINV + row_base, DELTA + row_base,
                                 sqm, sdm, meta_b, smf, srs,
                                 key_start, f_hi_s, m_hi_s, Lq, Lk, D, qk_scale, window, zero_single, q_off,
                                 SUB_M, BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                                 not HAS_WINDOW, TMA=USE_TMA, qd=qds, dod=dods)
    out_base = pid_bh.to(tl.int64) * Lk * D + key_start.to(tl.int64) * D
    ptrs = offs_n[:, None] * D + offs_d[None, :]
    tile_ok = (key_start + offs_n < Lk)[:, None] & (offs_d < D)[None, :]  # recomputed: not live across the loops
    if SPLIT_GROUP:  # fp32 shares, summed (then rounded once) by the launcher
        tl.store(DK + out_base + ptrs, dk * sm_scale, mask=tile_ok)
        tl.store(DV + out_base + ptrs, dv, mask=tile_ok)
    else:
        tl.store(DK + out_base + ptrs, _cast(dk * sm_scale, DK.dtype.element_ty, UPCAST), mask=tile_ok)
        tl.store(DV + out_base + ptrs, _cast(dv, DV.dtype.element_ty, UPCAST), mask=tile_ok)
