"""The forward kernel: one program per (query-row block, batch x query head), online softmax over the key
tiles of `block_ranges`, the loop split into masked tiles, plain tiles (no mask arithmetic), masked tiles and
look-ahead tiles. Scores are kept in base 2: ``qk_scale = scale * log2(e)``."""
import triton
import triton.language as tl

from .tile_io import KEY_ONLY_ARGS, PLAIN_UNROLL, _cast, _tile_slices, _mm, _narrow_loops, _row_tile
from .mask_rules import _look_bits, _tile_allowed, _tile_key_fields
from .block_ranges import _diagonal_kind, _next_look_block, _query_block


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
              q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, Lk, D, qk_scale, window,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
              UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr = False,
              BEFORE: tl.constexpr = False, AFTER: tl.constexpr = False, LOOK: tl.constexpr = True,
              NOPAD: tl.constexpr = False, TMA: tl.constexpr = False, kd=None, vd=None, look=0,
              INSIDE: tl.constexpr = False):
    """One key tile. Masked tiles: BEFORE (keys at or before every row), AFTER (keys after every row: the
    look-ahead tiles), else the diagonal ones (LOOK=False: of a row block that looks ahead at nothing; NOPAD:
    no padding among the keys, INSIDE: every row's document starts at or before them, see `_diagonal_kind`);
    plain MMA evaluates `_allowed_span` (NOPAD: `_allowed_causal`, `_allowed_look`), groups or a window
    `_allowed`. `look`: `_look_bits` of the block. TMA (`triton_ops._tma_level`): K and V
    tiles come through the tensor descriptors kd / vd (`_head_slice`), except, at level 1, V in masked tiles
    that may hold padding keys, which a masked pointer load reads as 0 (zeroing a descriptor-loaded tile would
    take it out of shared memory); at level 2 the mask has no padding and those read through vd as well."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    if MASKED:
        k_pos, k_doc, k_seg, k_mod, k_grp, k_eff, k_bit, k_real = _tile_key_fields(
            meta_b, smf, start, offs_n, Lk, HAS_GROUPS, HAS_WINDOW, BEFORE, AFTER, NOPAD, look, LOOK)
        # K needs no padding mask: a padding key's scores (NaN or inf if K holds them) are replaced by -inf
        # before any use. BEFORE tiles lie inside [0, Lk) (see `_lookahead_split`): no mask at all.
        k = _row_tile(kd if TMA else k_base, start, skn, offs_n, offs_d, D, start + offs_n < Lk,
                      0 if BEFORE or NOPAD else 1, EVEN_D, TMA)
    else:  # a plain tile lies inside [0, Lk) (see `_key_block_ranges`): only the head dim can need a mask
        k = _row_tile(kd if TMA else k_base, start, skn, offs_n, offs_d, D, offs_n, 0, EVEN_D, TMA)
    qk = _mm(q, tl.trans(k), None, DOT_PREC, UPCAST)
    # the scale folded into the row max (qk_scale > 0): one FMA per score, as the Triton tutorial does
    if MASKED:
        ok = _tile_allowed(q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, offs_n, k_pos, k_doc, k_seg,
                           k_mod, k_grp, k_eff, k_bit, window, HAS_GROUPS, HAS_WINDOW, BEFORE, AFTER, LOOK, NOPAD,
                           INSIDE)
        qk = tl.where(ok, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:  # every score of a plain tile is finite (padding and out-of-range rows load q = 0): so is m_new
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = m_new
    p = tl.math.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED and not NOPAD and TMA == 2:  # no padding key anywhere: rows past Lk read 0 from the descriptor
        v = _row_tile(vd, start, svn, offs_n, offs_d, D, k_real, 1, EVEN_D, TMA)
    elif MASKED and not NOPAD:  # padding keys load V as 0: p is 0 there, and 0 * (NaN or inf) would not be
        v = _row_tile(v_base, start, svn, offs_n, offs_d, D, k_real, 2, EVEN_D, False)
    else:
        v = _row_tile(vd if TMA else v_base, start, svn, offs_n, offs_d, D, offs_n, 0, EVEN_D, TMA)
    acc = acc * alpha[:, None]
    acc = _mm(_cast(p, v.dtype, UPCAST), v, acc, DOT_PREC, UPCAST)
    return acc, l_i, m_new


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
               q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, n_hi, Lk, D, qk_scale, window,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
               UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr = False,
              BEFORE: tl.constexpr = False, LOOK: tl.constexpr = True, NOPAD: tl.constexpr = False,
               TMA: tl.constexpr = False, kd=None, vd=None, look=0, INSIDE: tl.constexpr = False,
               UNROLL: tl.constexpr = PLAIN_UNROLL):
    for n in tl.range(n_lo, n_hi, loop_unroll_factor=1 if MASKED else UNROLL):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                  q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n * BLOCK_N, Lk, D, qk_scale, window,
                                  BLOCK_N, BLOCK_D, MASKED, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, BEFORE, False, LOOK,
                                  NOPAD, TMA, kd, vd, look, INSIDE)
    return acc, l_i, m_i


@triton.jit
def _fwd_look_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                    q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, a_lo, n_hi, Lk, D, qk_scale, window,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
                    UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr = False,
                    TMA: tl.constexpr = False, kd=None, vd=None):
    """The look-ahead tiles [a_lo, n_hi), hopping over runs of modalities no row looks ahead at."""
    bits = _look_bits(q_bits, q_gbits, HAS_GROUPS)
    n = _next_look_block(meta_b, smf, a_lo, n_hi, bits, BLOCK_N)
    while n < n_hi:
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                  q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n * BLOCK_N, Lk, D, qk_scale, window,
                                  BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, False, True,
                                  TMA=TMA, kd=kd, vd=vd, look=bits)
        n = _next_look_block(meta_b, smf, n + 1, n_hi, bits, BLOCK_N)
    return acc, l_i, m_i


@triton.jit
def _fwd_row_block(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf, pad_b,
                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi,
                   n_lo, f_lo, f_hi, c_hi, a_lo, n_hi, s_lo, s_hi, s_alo, s_ahi, Lk, D, qk_scale, window,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
                   HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr,
                   TMA: tl.constexpr = False, kd=None, vd=None, DECODE: tl.constexpr = False, SUB_N: tl.constexpr = 0,
                   kds=None, vds=None):
    """A row block's four loops (`_lookahead_split`), each cut to [s_lo, s_hi) (the causal blocks [n_lo, c_hi))
    or [s_alo, s_ahi) (the look-ahead blocks [a_lo, n_hi)): the whole row block in the prefill, one split of it
    in decode (`decode_kernels`). Masked [n_lo, f_lo) (keys at or before every row), plain [f_lo, f_hi),
    diagonal [f_hi, c_hi) by the rule `_diagonal_kind` picks over the whole diagonal range (it holds on any
    part of it), look-ahead [a_lo, n_hi). DECODE (a split of the decode kernel: a few tiles per loop, on mma.sync
    tiles that spill with more code in flight) runs every diagonal tile with the full form (one loop, not four)
    and the plain loop not unrolled. SUB_N (0: BLOCK_N), kds / vds: the masked loops walk the same keys in
    tiles of SUB_N keys through descriptors of that width (`triton_ops.MASKED_N`): whole 128-key masked tiles
    spill (each per-key field of the rule takes 32 registers per thread), and the plain loop keeps its width.
    The plain loop is unrolled only while a key tile holds at most 64x128 elements (an unrolled loop holds two
    tiles' stage buffers in shared memory)."""
    R: tl.constexpr = BLOCK_N // SUB_N if SUB_N > 0 and SUB_N < BLOCK_N else 1
    MN: tl.constexpr = BLOCK_N // R
    km, vm, a_hi = _narrow_loops(kd, vd, kds, vds, s_ahi, Lk, R, MN)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                               q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, tl.maximum(n_lo, s_lo) * R,
                               tl.minimum(f_lo, s_hi) * R, Lk, D, qk_scale, window, MN, BLOCK_D, True, DOT_PREC,
                               UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, not HAS_WINDOW, TMA=TMA, kd=km, vd=vm)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                               q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, tl.maximum(f_lo, s_lo),
                               tl.minimum(f_hi, s_hi), Lk, D, qk_scale, window, BLOCK_N, BLOCK_D, False, DOT_PREC,
                               UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, TMA=TMA, kd=kd, vd=vd,
                               UNROLL=1 if DECODE or BLOCK_N * BLOCK_D > 64 * 128 else PLAIN_UNROLL)
    look = _look_bits(q_bits, q_gbits, HAS_GROUPS)
    diag = _diagonal_kind(pad_b, q_doc, q_lo, look, f_hi, c_hi, Lk, BLOCK_N, HAS_GROUPS, HAS_WINDOW or DECODE)
    d_lo = tl.maximum(f_hi, s_lo) * R
    d_hi = tl.minimum(c_hi, s_hi) * R
    if diag == 3:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, d_lo, d_hi, Lk, D, qk_scale,
                                   window, MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D,
                                   LOOK=False, NOPAD=True, INSIDE=True, TMA=TMA, kd=km, vd=vm)
    elif diag == 2:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, d_lo, d_hi, Lk, D, qk_scale,
                                   window, MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D,
                                   LOOK=False, NOPAD=True, TMA=TMA, kd=km, vd=vm)
    elif diag == 1:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, d_lo, d_hi, Lk, D, qk_scale,
                                   window, MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D,
                                   NOPAD=True, INSIDE=True, TMA=TMA, kd=km, vd=vm, look=look)
    else:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, d_lo, d_hi, Lk, D, qk_scale,
                                   window, MN, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D,
                                   TMA=TMA, kd=km, vd=vm, look=look)
    acc, l_i, m_i = _fwd_look_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                    q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, s_alo * R, a_hi, Lk, D,
                                    qk_scale, window, MN, BLOCK_D, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D,
                                    TMA=TMA, kd=km, vd=vm)
    return acc, l_i, m_i


@triton.jit(do_not_specialize=KEY_ONLY_ARGS)
def mma_fwd_kernel(Q, K, V, O, LSE, MROW, LINV, META, PADCUM, WIN,
                   sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
                   smb, smf, spb, swb, swf, Hq, Lq, Lk, D, GROUP, qk_scale, window, LQ_BUCKET, DOC_BUCKET,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
                   UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   SPLIT_STATS: tl.constexpr, EXACT_DELTA: tl.constexpr, EVEN_D: tl.constexpr = False, QPOS=None,
                   HAS_QPOS: tl.constexpr = False, TMA: tl.constexpr = False, MASKED_N: tl.constexpr = 0):
    """HAS_QPOS: query row r sits at absolute position QPOS[r] (int32, increasing), not Lk - Lq + r.
    TMA: 0, 1 or 2 (`triton_ops._tma_level`): K and V tiles through tensor descriptors (sm_90's copy engine).
    MASKED_N (0: no limit): the widest masked tile; wider key tiles run their masked loops narrower
    (`_fwd_row_block`)."""
    (pid_bh, b, h, hk, row_start, rows, row_ok, meta_b, pad_b, q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo,
     q_hi, n_lo, f_lo, f_hi, c_hi, a_lo, n_hi) = _query_block(META, PADCUM, WIN, smb, smf, spb, swb, swf, Hq, Lq, Lk,
                                                               GROUP, window, QPOS, BLOCK_M, BLOCK_N, HAS_GROUPS,
                                                               HAS_WINDOW, HAS_QPOS)
    offs_d = tl.arange(0, BLOCK_D)

    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + row_start.to(tl.int64) * sqm
    tile_ok = row_ok[:, None] & (offs_d < D)[None, :]
    q_ok = tile_ok & (q_doc >= 0)[:, None]  # padding query rows load as 0, whatever q holds
    q = tl.load(q_base + tl.arange(0, BLOCK_M)[:, None] * sqm + offs_d[None, :], mask=q_ok, other=0.0)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    kd, vd, kds, vds = _tile_slices(k_base, v_base, Lk, D, skn, svn, BLOCK_N, MASKED_N, BLOCK_D, TMA)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _fwd_row_block(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf, pad_b,
                                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi,
                                   n_lo, f_lo, f_hi, c_hi, a_lo, n_hi, n_lo, c_hi, a_lo, n_hi, Lk, D, qk_scale, window,
                                   BLOCK_N, BLOCK_D, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, TMA, kd, vd,
                                   SUB_N=MASKED_N, kds=kds, vds=vds)

    row_valid = q_doc >= 0
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = tl.where(row_valid[:, None], acc / l_safe[:, None], 0.0)
    o_base = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + row_start.to(tl.int64) * som
    tl.store(o_base + tl.arange(0, BLOCK_M)[:, None] * som + offs_d[None, :], _cast(out, O.dtype.element_ty, UPCAST), mask=tile_ok)
    lse = tl.where(row_valid, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * Lq + rows, lse, mask=row_ok)
    if SPLIT_STATS:  # the backward recomputes p = exp2(s - m) / l as softmax does, not exp2(s - lse)
        tl.store(MROW + pid_bh.to(tl.int64) * Lq + rows, tl.where(row_valid, m_i, float("inf")), mask=row_ok)
        tl.store(LINV + pid_bh.to(tl.int64) * Lq + rows, tl.where(row_valid, 1.0 / l_safe, 0.0), mask=row_ok)
