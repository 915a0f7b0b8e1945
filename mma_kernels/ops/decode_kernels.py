"""Triton kernels of the decode path: split-KV attention with GQA packing, and the LSE merge of its splits.

For ``Lq <= 16`` query rows (one new token, or a few). One program handles one KV head, a chunk of the query
heads of its GQA group and one *split* of the keys: the tile's rows are (query head, query row) pairs, row
``i = g * Lq + r`` for head ``g`` of the chunk and query row ``r``, so K/V are read once per KV head, not once
per query head. The mask of every row depends only on its query row (the rule ignores the head), so the
per-row fields are those of position ``Lk - Lq + r``.

The key blocks a program visits are the prefill forward's, reduced over the ``Lq`` query rows by the same
helpers (`_key_block_ranges`, `_lookahead_split` in `triton_kernels.py`): masked tiles before the rows,
unmasked tiles, diagonal tiles, look-ahead tiles. The blocks that hold work, ``[n_lo, c_hi)`` then
``[a_lo, n_hi)``, are cut into ``NUM_SPLITS`` runs of equal length (up to one block); split ``s`` runs the tiles
of its run with the prefill's own tile function (`_fwd_tile`: the same online softmax and the same per-element
rules). A split writes its rows' unnormalised fp32 accumulator, running max (base 2, scale folded in) and sum;
the merge kernel combines the splits of each row in fp32 (``m = max m_s``, ``l = sum l_s 2^(m_s - m)``,
``o = sum acc_s 2^(m_s - m) / l``), exactly the online softmax's own rescaling. With one split the decode
kernel writes the output itself (``DIRECT``).

Outputs match the prefill forward's: out, lse (natural log, -inf for padding rows) and, for fp32
(``SPLIT_STATS``), the row max and 1/sum the prefill backward recomputes p from.
"""
import triton
import triton.language as tl

from .triton_kernels import (_cast, _fwd_row_block, _key_block_ranges, _load_query_fields, _lookahead_split,
                             _span_query_bounds)

MAX_ROWS = 16  # the most query rows the decode path takes (Lq <= MAX_ROWS)
_ROWS = tl.constexpr(MAX_ROWS)


@triton.jit
def mma_decode_kernel(Q, K, V, O, LSE, MROW, LINV, PACC, PM, PL, META, PADCUM, WIN,
                      sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
                      smb, smf, spb, swb, swf, Hq, Hkv, Lq, Lk, D, GROUP, HEADS, CHUNKS, qk_scale, window,
                      NUM_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
                      HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr, SPLIT_STATS: tl.constexpr,
                      EVEN_D: tl.constexpr = False):
    """Grid (NUM_SPLITS, B * Hkv * CHUNKS): split, then (batch row, KV head, chunk of HEADS query heads).

    Partials (NUM_SPLITS > 1): PACC [B, Hq, Lq, NUM_SPLITS, D] (unnormalised), PM / PL [B, Hq, Lq, NUM_SPLITS]
    (row max in base 2 with the scale folded in, -inf for an empty or padding row; the row sum). With one
    split (DIRECT) the program writes O, LSE (and MROW, LINV under SPLIT_STATS) as the prefill forward does."""
    pid_s = tl.program_id(0)
    pid = tl.program_id(1)
    b = pid // (Hkv * CHUNKS)
    hk = (pid // CHUNKS) % Hkv
    c = pid % CHUNKS
    off = Lk - Lq
    meta_b = META + b.to(tl.int64) * smb
    pad_b = PADCUM + b.to(tl.int64) * spb
    win_b = WIN + b.to(tl.int64) * swb
    # the program's key blocks, from the Lq query rows (MAX_ROWS rows, those past Lq masked)
    n_lo, f_lo, f_hi, n_hi = _key_block_ranges(meta_b, smf, pad_b, 0, Lq, Lk, _ROWS, BLOCK_N,
                                               win_b, swf, window, HAS_WINDOW)
    f_lo, f_hi, c_hi, a_lo = _lookahead_split(meta_b, smf, 0, Lq, Lk, n_lo, f_lo, f_hi, n_hi, _ROWS, BLOCK_N)
    # this split's share of the blocks that hold work: [n_lo, c_hi) then [a_lo, n_hi), cut in runs whose
    # lengths differ by at most one block
    w_c = c_hi - n_lo
    work = w_c + (n_hi - a_lo)
    v0 = (pid_s * work) // NUM_SPLITS
    v1 = ((pid_s + 1) * work) // NUM_SPLITS
    s_lo = n_lo + tl.minimum(v0, w_c)
    s_hi = n_lo + tl.minimum(v1, w_c)
    s_alo = a_lo + tl.maximum(v0 - w_c, 0)
    s_ahi = a_lo + tl.maximum(v1 - w_c, 0)

    # packed rows: i = g * Lq + r, query head hk * GROUP + c * HEADS + g, query row r
    i = tl.arange(0, BLOCK_M)
    g = i // Lq
    r = i % Lq
    hg = c * HEADS + g  # head inside the group
    h = hk * GROUP + hg
    row_ok = (g < HEADS) & (hg < GROUP)
    q_pos = off + r
    q_doc, q_seg, q_bits, q_grp, q_gbits = _load_query_fields(meta_b, smf, q_pos, row_ok, HAS_GROUPS)
    q_pos, q_lo, q_hi = _span_query_bounds(meta_b, smf, q_pos, row_ok, q_doc, Lk)
    row_valid = row_ok & (q_doc >= 0)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = (Q + b.to(tl.int64) * sqb + h.to(tl.int64)[:, None] * sqh + r[:, None] * sqm + offs_d[None, :])
    q = tl.load(q_ptrs, mask=row_valid[:, None] & (offs_d < D)[None, :], other=0.0)  # padding rows load 0
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _fwd_row_block(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf, pad_b,
                                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi,
                                   n_lo, f_lo, f_hi, c_hi, a_lo, n_hi, s_lo, s_hi, s_alo, s_ahi, Lk, D, qk_scale,
                                   window, BLOCK_N, BLOCK_D, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D,
                                   DECODE=True)
    row = (b * Hq + h).to(tl.int64) * Lq + r  # (b, h, r) as a row index of [B, Hq, Lq]
    if NUM_SPLITS == 1:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = tl.where(row_valid[:, None], acc / l_safe[:, None], 0.0)
        o_ptrs = O + b.to(tl.int64) * sob + h.to(tl.int64)[:, None] * soh + r[:, None] * som + offs_d[None, :]
        tl.store(o_ptrs, _cast(out, O.dtype.element_ty, UPCAST), mask=row_ok[:, None] & (offs_d < D)[None, :])
        lse = tl.where(row_valid, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
        tl.store(LSE + row, lse, mask=row_ok)
        if SPLIT_STATS:
            tl.store(MROW + row, tl.where(row_valid, m_i, float("inf")), mask=row_ok)
            tl.store(LINV + row, tl.where(row_valid, 1.0 / l_safe, 0.0), mask=row_ok)
    else:
        # an empty split (no block, or a padding row) leaves m = -inf, l = 0: no weight in the merge
        m_out = tl.where(row_valid & (l_i > 0.0), m_i, float("-inf"))
        tl.store(PM + row * NUM_SPLITS + pid_s, m_out, mask=row_ok)
        tl.store(PL + row * NUM_SPLITS + pid_s, tl.where(row_valid, l_i, 0.0), mask=row_ok)
        p_ptrs = PACC + (row * NUM_SPLITS + pid_s)[:, None] * D + offs_d[None, :]
        tl.store(p_ptrs, tl.where(row_valid[:, None], acc, 0.0), mask=row_ok[:, None] & (offs_d < D)[None, :])


@triton.jit
def mma_decode_merge_kernel(O, LSE, MROW, LINV, PACC, PM, PL, soh, som, Hq, Lq, D,
                            NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                            UPCAST: tl.constexpr, SPLIT_STATS: tl.constexpr):
    """One program per row (b, h, r) of [B, Hq, Lq]: the splits' partials combined in fp32. O is [B, Hq, Lq, D]
    with strides (Hq * soh, soh, som, 1)."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    m_s = tl.load(PM + row * NUM_SPLITS + offs_s, mask=s_ok, other=float("-inf"))
    l_s = tl.load(PL + row * NUM_SPLITS + offs_s, mask=s_ok, other=0.0)
    m = tl.max(m_s, 0)
    valid = m > float("-inf")  # every non-padding row sees at least itself
    m_use = tl.where(valid, m, 0.0)
    w = tl.where(m_s > float("-inf"), tl.math.exp2(m_s - m_use), 0.0)
    l = tl.sum(l_s * w, 0)
    acc_ptrs = PACC + (row * NUM_SPLITS + offs_s)[:, None] * D + offs_d[None, :]
    acc = tl.load(acc_ptrs, mask=s_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    l_safe = tl.where(valid, l, 1.0)
    out = tl.sum(acc * w[:, None], 0) / l_safe
    out = tl.where(valid, out, 0.0)
    bh = row // Lq
    r = row % Lq
    tl.store(O + bh * soh + r * som + offs_d, _cast(out, O.dtype.element_ty, UPCAST), mask=offs_d < D)
    tl.store(LSE + row, tl.where(valid, (m + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf")))
    if SPLIT_STATS:
        tl.store(MROW + row, tl.where(valid, m, float("inf")))
        tl.store(LINV + row, tl.where(valid, 1.0 / l_safe, 0.0))
