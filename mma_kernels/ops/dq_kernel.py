"""The dQ kernel (FlashAttention-2 backward, query side): the forward's tile walk, dq += dS @ K per tile."""
import triton
import triton.language as tl

from .tile_io import KEY_ONLY_ARGS, _cast, _tile_slices, _load_rows, _load_some_rows, _mm, _narrow_loops
from .mask_rules import _look_bits, _tile_allowed, _tile_key_fields
from .block_ranges import _diagonal_kind, _next_look_block, _query_block


@triton.jit
def _dq_tile(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, Lk, D, qk_scale, window,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
             UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
             SPLIT_STATS: tl.constexpr, DELTA_PASS: tl.constexpr, EVEN_D: tl.constexpr = False,
             BEFORE: tl.constexpr = False, AFTER: tl.constexpr = False, LOOK: tl.constexpr = True,
             NOPAD: tl.constexpr = False, TMA: tl.constexpr = False, kd=None, vd=None, look=0,
             INSIDE: tl.constexpr = False):
    """One key tile: dq += dS @ K; with DELTA_PASS, only dsum += rowsum(P * dP). Masked tiles as in `_fwd_tile`;
    TMA as there: K and V through the descriptors kd / vd, except (level 1) in masked tiles that may hold
    padding keys."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    k_ptrs = k_base + tl.cast(start, tl.int64) * skn + offs_n[:, None] * skn + offs_d[None, :]
    v_ptrs = v_base + tl.cast(start, tl.int64) * svn + offs_n[:, None] * svn + offs_d[None, :]
    if MASKED:  # padding keys load K and V as 0: both meet p = 0 in a product (dS @ K, dO @ V^T)
        k_pos, k_doc, k_seg, k_mod, k_grp, k_eff, k_bit, k_real = _tile_key_fields(
            meta_b, smf, start, offs_n, Lk, HAS_GROUPS, HAS_WINDOW, BEFORE, AFTER, NOPAD, look, LOOK)
        if (NOPAD and TMA) or TMA == 2:  # level 2: no padding key anywhere; rows past Lk read 0
            k = kd.load([start, 0])
            v = vd.load([start, 0])
        elif NOPAD:
            k = _load_rows(k_ptrs, offs_d, D, EVEN_D)
            v = _load_rows(v_ptrs, offs_d, D, EVEN_D)
        else:
            k = _load_some_rows(k_ptrs, offs_d, D, k_real, EVEN_D)
            v = _load_some_rows(v_ptrs, offs_d, D, k_real, EVEN_D)
    elif TMA:  # a plain tile lies inside [0, Lk): only the head dim can need a mask (the descriptor's zero fill)
        k = kd.load([start, 0])
        v = vd.load([start, 0])
    else:
        k = _load_rows(k_ptrs, offs_d, D, EVEN_D)
        v = _load_rows(v_ptrs, offs_d, D, EVEN_D)
    qk = _mm(q, tl.trans(k), None, DOT_PREC, UPCAST) * qk_scale
    if SPLIT_STATS:  # lse2 holds the row max; linv 1/l (0 on rows whose ds is exactly 0)
        p = tl.math.exp2(qk - lse2[:, None]) * linv[:, None]
    else:
        p = tl.math.exp2(qk - lse2[:, None])
    if MASKED:
        ok = _tile_allowed(q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, offs_n, k_pos, k_doc, k_seg,
                           k_mod, k_grp, k_eff, k_bit, window, HAS_GROUPS, HAS_WINDOW, BEFORE, AFTER, LOOK, NOPAD,
                           INSIDE)
        p = tl.where(ok, p, 0.0)
    dp = _mm(do, tl.trans(v), None, DOT_PREC, UPCAST)
    if DELTA_PASS:
        dsum += tl.sum(p * dp, 1)
    else:
        ds = p * (dp - delta[:, None])
        dq = _mm(_cast(ds, k.dtype, UPCAST), k, dq, DOT_PREC, UPCAST)
    return dq, dsum


@triton.jit
def _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
              q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, n_hi, Lk, D, qk_scale, window,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
              UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
              SPLIT_STATS: tl.constexpr, DELTA_PASS: tl.constexpr, EVEN_D: tl.constexpr = False,
              BEFORE: tl.constexpr = False, LOOK: tl.constexpr = True, NOPAD: tl.constexpr = False,
              TMA: tl.constexpr = False, kd=None, vd=None, look=0, INSIDE: tl.constexpr = False):
    for n in range(n_lo, n_hi):
        dq, dsum = _dq_tile(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                            q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n * BLOCK_N, Lk, D, qk_scale, window,
                            BLOCK_N, BLOCK_D, MASKED, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS, EVEN_D, BEFORE,
                            False, LOOK, NOPAD, TMA, kd, vd, look, INSIDE)
    return dq, dsum


@triton.jit
def _dq_pass(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf, pad_b,
             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, f_lo, f_hi, c_hi, a_lo, n_hi, Lk, D, qk_scale, window,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
             UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
             SPLIT_STATS: tl.constexpr, DELTA_PASS: tl.constexpr, EVEN_D: tl.constexpr = False,
             TMA: tl.constexpr = False, kd=None, vd=None, SUB_N: tl.constexpr = 0, kds=None, vds=None):
    """Every tile of the row block: masked [n_lo, f_lo), plain [f_lo, f_hi), masked [f_hi, c_hi), then the
    look-ahead tiles from a_lo, hopping as `_fwd_look_tiles` does. SUB_N, kds, vds: the masked loops in tiles of
    SUB_N keys, as `_fwd_row_block` runs them."""
    R: tl.constexpr = BLOCK_N // SUB_N if SUB_N > 0 and SUB_N < BLOCK_N else 1
    MN: tl.constexpr = BLOCK_N // R
    km, vm, a_hi = _narrow_loops(kd, vd, kds, vds, n_hi, Lk, R, MN)
    d_hi = c_hi * R
    dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                         q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo * R, f_lo * R, Lk, D, qk_scale,
                         window, MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS,
                         EVEN_D, not HAS_WINDOW, TMA=TMA, kd=km, vd=vm)
    dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                         q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_lo, f_hi, Lk, D, qk_scale, window,
                         BLOCK_N, BLOCK_D, False, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS, EVEN_D, TMA=TMA, kd=kd, vd=vd)
    bits = _look_bits(q_bits, q_gbits, HAS_GROUPS)
    diag = _diagonal_kind(pad_b, q_doc, q_lo, bits, f_hi, c_hi, Lk, BLOCK_N, HAS_GROUPS, HAS_WINDOW)
    if diag == 3:  # the diagonal tiles, by rule as in the forward (`_fwd_row_block`)
        dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi * R, d_hi, Lk, D,
                             qk_scale, window, MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                             DELTA_PASS, EVEN_D, LOOK=False, NOPAD=True, INSIDE=True, TMA=TMA, kd=km, vd=vm)
    elif diag == 2:
        dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi * R, d_hi, Lk, D,
                             qk_scale, window, MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                             DELTA_PASS, EVEN_D, LOOK=False, NOPAD=True, TMA=TMA, kd=km, vd=vm)
    elif diag == 1:
        dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi * R, d_hi, Lk, D,
                             qk_scale, window, MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                             DELTA_PASS, EVEN_D, NOPAD=True, INSIDE=True, TMA=TMA, kd=km, vd=vm, look=bits)
    else:
        dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi * R, d_hi, Lk, D,
                             qk_scale, window, MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                             DELTA_PASS, EVEN_D, TMA=TMA, kd=km, vd=vm, look=bits)
    n = _next_look_block(meta_b, smf, a_lo * R, a_hi, bits, MN)
    while n < a_hi:
        dq, dsum = _dq_tile(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                            q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n * MN, Lk, D, qk_scale, window,
                            MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS, EVEN_D,
                            False, True, TMA=TMA, kd=km, vd=vm, look=bits)
        n = _next_look_block(meta_b, smf, n + 1, a_hi, bits, MN)
    return dq, dsum


@triton.jit(do_not_specialize=KEY_ONLY_ARGS)
def mma_bwd_dq_kernel(Q, K, V, DO, DQ, LSE2, LINV, DELTA, META, PADCUM, WIN,
                      sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm,
                      smb, smf, spb, swb, swf, srs, Hq, Lq, Lk, D, GROUP, qk_scale, sm_scale, window, zero_single,
                      LQ_BUCKET, DOC_BUCKET, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                      SPLIT_STATS: tl.constexpr, EXACT_DELTA: tl.constexpr, EVEN_D: tl.constexpr = False, QPOS=None,
                      HAS_QPOS: tl.constexpr = False, TMA: tl.constexpr = False, MASKED_N: tl.constexpr = 0):
    """dQ for one block of query rows. DQ is contiguous [B, Hq, Lq, D]; DO has strides sd*; LSE2, LINV and
    DELTA rows of a head lie `srs` apart (`triton_ops._row_stats`).
    HAS_QPOS: query row r sits at absolute position QPOS[r] (int32, increasing), not Lk - Lq + r.
    TMA: K and V tiles through tensor descriptors (see `_dq_tile`). MASKED_N: as in `mma_fwd_kernel`."""
    (pid_bh, b, h, hk, row_start, rows, row_ok, meta_b, pad_b, q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo,
     q_hi, n_lo, f_lo, f_hi, c_hi, a_lo, n_hi) = _query_block(META, PADCUM, WIN, smb, smf, spb, swb, swf, Hq, Lq, Lk,
                                                               GROUP, window, QPOS, BLOCK_M, BLOCK_N, HAS_GROUPS,
                                                               HAS_WINDOW, HAS_QPOS)
    offs_d = tl.arange(0, BLOCK_D)

    tile_ok = row_ok[:, None] & (offs_d < D)[None, :]
    ridx = tl.arange(0, BLOCK_M)[:, None]
    row_valid = row_ok & (q_doc >= 0)  # padding query rows load q, dO, delta as 0: zero dq whatever they hold
    q_ok = row_valid[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + row_start.to(tl.int64) * sqm + ridx * sqm + offs_d[None, :],
                mask=q_ok, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + row_start.to(tl.int64) * sdm + ridx * sdm + offs_d[None, :],
                 mask=q_ok, other=0.0)
    lse2 = tl.load(LSE2 + pid_bh.to(tl.int64) * srs + rows, mask=row_valid, other=float("inf"))
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * srs + rows, mask=row_valid, other=0.0)
    linv = tl.zeros([BLOCK_M], tl.float32)
    if SPLIT_STATS:
        linv = tl.load(LINV + pid_bh.to(tl.int64) * srs + rows, mask=row_valid, other=0.0)
        # a row that sees one key (l == 1) has ds = 0 exactly: say so rather than leave rounding noise
        linv = tl.where((linv == 1.0) & (zero_single != 0), 0.0, linv)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    # at level 1, 128x64 tiles above a head-dim block of 64 keep pointer loads: with descriptors there (tried
    # in issue 19) they spilled a few bytes before the loops; at level 2 they do not spill
    USE_TMA: tl.constexpr = TMA * (BLOCK_M * BLOCK_N < 128 * 64 or BLOCK_D <= 64 or TMA == 2)
    kd, vd, kds, vds = _tile_slices(k_base, v_base, Lk, D, skn, svn, BLOCK_N, MASKED_N, BLOCK_D, USE_TMA)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dsum = tl.zeros([BLOCK_M], tl.float32)
    if EXACT_DELTA:
        # fp32: delta = rowsum(P * dP) from this kernel's own P and dP, as softmax's backward computes it,
        # not rowsum(dO * O): when one key dominates dP - delta cancels, and only matching roundings
        # keep that within plain PyTorch's error. One extra pass (QK^T and dO V^T) over the row's keys.
        dq, dsum = _dq_pass(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf, pad_b,
                            q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, f_lo, f_hi, c_hi, a_lo, n_hi, Lk, D,
                            qk_scale, window, BLOCK_N, BLOCK_D, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                            True, EVEN_D, TMA=USE_TMA, kd=kd, vd=vd, SUB_N=MASKED_N, kds=kds, vds=vds)
        delta = delta + dsum  # DELTA came in holding -dlse (or 0)
        tl.store(DELTA + pid_bh.to(tl.int64) * srs + rows, delta, mask=row_ok)  # for the dK/dV kernel
    dq, dsum = _dq_pass(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf, pad_b,
                        q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, f_lo, f_hi, c_hi, a_lo, n_hi, Lk, D,
                        qk_scale, window, BLOCK_N, BLOCK_D, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                        False, EVEN_D, TMA=USE_TMA, kd=kd, vd=vd, SUB_N=MASKED_N, kds=kds, vds=vds)
    dq_base = DQ + pid_bh.to(tl.int64) * Lq * D + row_start.to(tl.int64) * D
    tl.store(dq_base + ridx * D + offs_d[None, :], _cast(dq * sm_scale, DQ.dtype.element_ty, UPCAST), mask=tile_ok)
