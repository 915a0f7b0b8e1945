"""Which tiles a program visits, from the O(L) fields alone: for a query-row block, the key blocks to visit
and the fully allowed sub-range (`_key_block_ranges`), its causal and look-ahead parts (`_lookahead_split`),
the kind of its diagonal tiles (`_diagonal_kind`), the next look-ahead block (`_next_look_block`); for a key
block, the query blocks (`_query_block_ranges`). `benchmarks/tiles.py` replicates them in torch."""
import triton
import triton.language as tl

from .mask_rules import _load_query_fields, _span_query_bounds


@triton.jit
def _key_block_ranges(meta_b, smf, pad_b, row_start, Lq, Lk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      win_b=None, swf=0, window=0, HAS_WINDOW: tl.constexpr = False, QPOS=None,
                      HAS_QPOS: tl.constexpr = False):
    """For query rows [row_start, row_start+BLOCK_M): key blocks to visit [n_lo, n_hi) and fully allowed [f_lo, f_hi).
    HAS_QPOS: the rows sit at the increasing absolute positions QPOS[row] (else at row + Lk - Lq)."""
    off = Lk - Lq
    rows = row_start + tl.arange(0, BLOCK_M)
    ok = rows < Lq
    if HAS_QPOS:
        rpos = tl.load(QPOS + rows, mask=ok, other=0)
        doc_lo = tl.load(meta_b + 4 * smf + rpos, mask=ok, other=Lk)
        if HAS_WINDOW:
            kv_lo = tl.load(win_b + 0 * swf + rpos, mask=ok, other=Lk)
        else:
            kv_lo = doc_lo
        kv_hi = tl.load(meta_b + 5 * smf + rpos, mask=ok, other=-1)
    else:
        doc_lo = tl.load(meta_b + 4 * smf + off + rows, mask=ok, other=Lk)
        if HAS_WINDOW:
            kv_lo = tl.load(win_b + 0 * swf + off + rows, mask=ok, other=Lk)
        else:
            kv_lo = doc_lo
        kv_hi = tl.load(meta_b + 5 * smf + off + rows, mask=ok, other=-1)
    valid = kv_hi >= 0
    lo = tl.min(kv_lo, 0)
    hi = tl.max(kv_hi, 0)
    any_valid = hi >= 0
    n_lo = tl.where(any_valid, lo // BLOCK_N, 0)
    n_hi = tl.where(any_valid, hi // BLOCK_N + 1, 0)
    # fully allowed: every key of the block is a non-padding key at or before the first row,
    # and at or after the start of every row's document (and inside every row's window)
    lo_max = tl.max(tl.where(valid, doc_lo, 0), 0)
    if HAS_WINDOW:
        if HAS_QPOS:
            last_row = tl.load(QPOS + tl.minimum(row_start + BLOCK_M, Lq) - 1)
        else:
            last_row = tl.minimum(row_start + BLOCK_M, Lq) - 1 + off
        lo_max = tl.maximum(lo_max, last_row - window + 1)
    f_lo = (lo_max + BLOCK_N - 1) // BLOCK_N
    if HAS_QPOS:  # at or before the first (lowest) row
        f_hi = (tl.load(QPOS + row_start) + 1) // BLOCK_N
    else:
        f_hi = (row_start + off + 1) // BLOCK_N
    a = tl.minimum(f_lo * BLOCK_N, Lk)
    b = tl.minimum(f_hi * BLOCK_N, Lk)
    pads = tl.load(pad_b + b) - tl.load(pad_b + a)
    full = any_valid & (f_lo < f_hi) & (pads == 0)
    f_lo = tl.where(full, f_lo, n_hi)
    f_hi = tl.where(full, f_hi, n_hi)
    return n_lo, f_lo, f_hi, n_hi


@triton.jit
def _lookahead_split(meta_b, smf, row_start, Lq, Lk, n_lo, f_lo, f_hi, n_hi,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QPOS=None, HAS_QPOS: tl.constexpr = False):
    """Split [n_lo, n_hi) of `_key_block_ranges` into its causal part and its look-ahead part.

    Keys after the block's last row are only ever seen by look-ahead, and no row sees one before its
    first look-ahead key (LA_LO), so key blocks [c_hi, a_lo) hold no allowed pair. Returns the four
    loop bounds: masked [n_lo, f_lo) (keys at or before every row), plain [f_lo, f_hi), masked
    [f_hi, c_hi), masked [a_lo, n_hi).
    """
    off = Lk - Lq
    rows = row_start + tl.arange(0, BLOCK_M)
    if HAS_QPOS:  # rows at increasing positions QPOS[row]: the last row is the highest
        rpos = tl.load(QPOS + rows, mask=rows < Lq, other=0)
        la = tl.min(tl.load(meta_b + 8 * smf + rpos, mask=rows < Lq, other=Lk), 0)
        last = tl.load(QPOS + tl.minimum(row_start + BLOCK_M, Lq) - 1)
    else:
        la = tl.min(tl.load(meta_b + 8 * smf + off + rows, mask=rows < Lq, other=Lk), 0)
        last = tl.minimum(row_start + BLOCK_M, Lq) - 1 + off
    c_hi = tl.maximum(tl.minimum(last // BLOCK_N + 1, n_hi), n_lo)
    a_lo = tl.where(la < Lk, tl.maximum(la, last + 1) // BLOCK_N, n_hi)
    a_lo = tl.minimum(tl.maximum(a_lo, c_hi), n_hi)
    # keys of blocks before d_lo are at or before every row of the block: the masked tiles there need
    # only the document bound (`_allowed_before`); without fully allowed tiles, [n_lo, d_lo) is masked
    if HAS_QPOS:
        d_lo = tl.minimum(tl.maximum((tl.load(QPOS + row_start) + 1) // BLOCK_N, n_lo), c_hi)
    else:
        d_lo = tl.minimum(tl.maximum((row_start + off + 1) // BLOCK_N, n_lo), c_hi)
    full = f_lo < f_hi
    f_lo = tl.where(full, tl.minimum(f_lo, c_hi), d_lo)
    f_hi = tl.where(full, tl.minimum(f_hi, c_hi), d_lo)
    return f_lo, f_hi, c_hi, a_lo


@triton.jit
def _diagonal_kind(pad_b, q_doc, q_lo, look, f_hi, c_hi, Lk, BLOCK_N: tl.constexpr, HAS_GROUPS: tl.constexpr,
                   HAS_WINDOW: tl.constexpr):
    """Which form of the rule the diagonal tiles [f_hi, c_hi) of a row block need (`look`: `_look_bits` of the
    block). When these keys lie inside [0, Lk) with no padding among them (two `padcum` loads; NOPAD: keys by
    position alone, no key field unless a row looks ahead): 3 no row looks ahead and every row's document
    starts at or before the tiles (INSIDE): plain causal, `_allowed_causal`; 2 no row looks ahead: the causal
    form of `_allowed_span`; 1 INSIDE, some row looks ahead: `_allowed_look`. 0 otherwise (padding among the
    keys, or look-ahead with a document starting inside the tiles; groups or a window: `_allowed`)."""
    if HAS_GROUPS or HAS_WINDOW:
        return 0
    else:
        a = tl.minimum(f_hi * BLOCK_N, Lk)
        b = tl.maximum(tl.minimum(c_hi * BLOCK_N, Lk), a)
        pads = tl.load(pad_b + b) - tl.load(pad_b + a)
        inside = tl.max(tl.where(q_doc >= 0, q_lo, 0), 0) <= f_hi * BLOCK_N
        nopad = (pads == 0) & (c_hi * BLOCK_N <= Lk)
        return tl.where(nopad, tl.where(look == 0, tl.where(inside, 3, 2), tl.where(inside, 1, 0)), 0)


@triton.jit
def _next_look_block(meta_b, smf, n, n_hi, bits, BLOCK_N: tl.constexpr):
    """The next key block from `n` of the look-ahead loop: `n` itself when its first key is of a modality
    in `bits`, else the block holding the end of that key's modality run (MOD_NEXT): blocks wholly inside
    a run of a modality no row looks ahead at hold no look-ahead pair."""
    p = tl.maximum(tl.minimum(n, n_hi - 1), 0) * BLOCK_N
    mod = tl.load(meta_b + 2 * smf + p)
    nxt = tl.load(meta_b + 9 * smf + p)
    seen = ((bits >> mod) & 1) != 0
    return tl.where((n >= n_hi) | seen, n, nxt // BLOCK_N)


@triton.jit
def _query_block_ranges(meta_b, smf, pad_b, key_start, Lq, Lk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        win_b=None, swf=0, window=0, HAS_WINDOW: tl.constexpr = False):
    """For keys [key_start, key_start+BLOCK_N): query row blocks to visit [m_lo, m_hi) and fully allowed [f_lo, f_hi)."""
    off = Lk - Lq
    keys = key_start + tl.arange(0, BLOCK_N)
    ok = keys < Lk
    q_lo = tl.load(meta_b + 6 * smf + keys, mask=ok, other=Lk)
    doc_hi = tl.load(meta_b + 7 * smf + keys, mask=ok, other=-1)
    if HAS_WINDOW:
        q_hi = tl.load(win_b + 1 * swf + keys, mask=ok, other=-1)
    else:
        q_hi = doc_hi
    valid = doc_hi >= 0
    r_lo = tl.maximum(tl.min(q_lo, 0) - off, 0)
    r_hi = tl.minimum(tl.max(q_hi, 0) - off, Lq - 1)
    nonempty = r_hi >= r_lo
    m_lo = tl.where(nonempty, r_lo // BLOCK_M, 0)
    m_hi = tl.where(nonempty, r_hi // BLOCK_M + 1, 0)
    # fully allowed: rows at or after the block's last key, and at or before every key's document end
    first_row = tl.maximum(key_start + BLOCK_N - 1 - off, 0)
    f_lo = (first_row + BLOCK_M - 1) // BLOCK_M
    end_row = tl.min(tl.where(valid, doc_hi, Lk), 0) - off + 1  # rows < end_row
    if HAS_WINDOW:  # and inside the window of the block's first key
        end_row = tl.minimum(end_row, key_start + window - off)
    f_hi = tl.where(end_row > 0, end_row, 0) // BLOCK_M
    kend = tl.minimum(key_start + BLOCK_N, Lk)
    pads = tl.load(pad_b + kend) - tl.load(pad_b + key_start)
    # and free of padding queries (their q/dO are only zeroed in masked tiles)
    ra = tl.minimum(tl.maximum(f_lo, m_lo) * BLOCK_M, Lq) + off
    rb = tl.minimum(tl.minimum(f_hi, m_hi) * BLOCK_M, Lq) + off
    row_pads = tl.where(rb > ra, tl.load(pad_b + tl.maximum(rb, ra)) - tl.load(pad_b + ra), 0)
    full = nonempty & (key_start + BLOCK_N <= Lk) & (pads == 0) & (row_pads == 0) & (f_lo < f_hi)
    f_lo = tl.where(full, tl.minimum(tl.maximum(f_lo, m_lo), m_hi), m_hi)
    f_hi = tl.where(full, tl.minimum(f_hi, m_hi), m_hi)
    f_hi = tl.maximum(f_hi, f_lo)
    return m_lo, f_lo, f_hi, m_hi


@triton.jit
def _query_block(META, PADCUM, WIN, smb, smf, spb, swb, swf, Hq, Lq, Lk, GROUP, window, QPOS,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 HAS_QPOS: tl.constexpr):
    """A forward or dQ program's query-row block (grid: row blocks x batch * query heads): its batch row and
    heads, rows, per-row fields (`_load_query_fields`, `_span_query_bounds`), and the key-block ranges of its
    four loops (`_key_block_ranges`, `_lookahead_split`)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // GROUP
    off = Lk - Lq
    row_start = pid_m * BLOCK_M
    rows = row_start + tl.arange(0, BLOCK_M)
    row_ok = rows < Lq
    meta_b = META + b.to(tl.int64) * smb
    pad_b = PADCUM + b.to(tl.int64) * spb
    win_b = WIN + b.to(tl.int64) * swb
    if HAS_QPOS:
        q_pos = tl.load(QPOS + rows, mask=row_ok, other=0)
    else:
        q_pos = rows + off
    q_doc, q_seg, q_bits, q_grp, q_gbits = _load_query_fields(meta_b, smf, q_pos, row_ok, HAS_GROUPS)
    q_pos, q_lo, q_hi = _span_query_bounds(meta_b, smf, q_pos, row_ok, q_doc, Lk)
    n_lo, f_lo, f_hi, n_hi = _key_block_ranges(meta_b, smf, pad_b, row_start, Lq, Lk, BLOCK_M, BLOCK_N,
                                               win_b, swf, window, HAS_WINDOW, QPOS, HAS_QPOS)
    f_lo, f_hi, c_hi, a_lo = _lookahead_split(meta_b, smf, row_start, Lq, Lk, n_lo, f_lo, f_hi, n_hi, BLOCK_M, BLOCK_N,
                                              QPOS, HAS_QPOS)
    return (pid_bh, b, h, hk, row_start, rows, row_ok, meta_b, pad_b, q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo,
            q_hi, n_lo, f_lo, f_hi, c_hi, a_lo, n_hi)
