"""Triton kernels of MMA attention: forward, dQ, and dK/dV (FlashAttention-2 style).

The mask is computed inside each tile from the per-token fields of `MMAMask.meta`
(see `mma_kernels/mask.py`). Every program first reduces its rows' (or keys')
ranges to a block range to visit and a sub-range of fully allowed tiles; the loop
is split in three: masked tiles, tiles with no mask arithmetic, masked tiles; fwd and dQ add a fourth,
the look-ahead tiles past the gap of `_lookahead_split`.
Scores are kept in base 2: ``qk_scale = scale * log2(e)``.

Field rows of META (per batch row, stride ``smf`` between fields):
0 DOC, 1 SEG, 2 KMOD, 3 QBITS, 4 KV_LO, 5 KV_HI, 6 Q_LO, 7 Q_HI, 8 LA_LO, 9 MOD_NEXT, and with groups 10 GRP, 11 GBITS.
WIN (only read when HAS_WINDOW) holds the per-window bounds of `MMAMask.window_fields`:
0 KV_LO and 1 Q_HI under the window. HAS_GROUPS / HAS_WINDOW are constexpr: without groups or a
window the kernels compile exactly to the plain MMA code.
"""
import triton
import triton.language as tl


@triton.jit
def _mm(a, b, acc, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b (+ acc) in fp32. UPCAST (bf16 under the interpreter, whose bf16 dot is broken) feeds
    fp32 copies of the operands: bf16 products are exact in fp32, so the result is the same."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PREC)


@triton.jit
def _cast(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """x.to(dtype). Under UPCAST (bf16 in the interpreter, which truncates fp32 -> bf16) round to
    nearest even by hand, as the GPU's cvt.rn does, and keep the (exactly bf16) value in fp32."""
    if UPCAST:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + ((bits >> 16) & 1) + 0x7FFF) >> 16) << 16
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _load_rows(ptrs, offs_d, D, EVEN_D: tl.constexpr):
    """A [rows, BLOCK_D] tile whose rows are all in range: no mask at all when D == BLOCK_D."""
    if EVEN_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=(offs_d < D)[None, :], other=0.0)


@triton.jit
def _load_some_rows(ptrs, offs_d, D, row_ok, EVEN_D: tl.constexpr):
    """A [rows, BLOCK_D] tile with the rows where `row_ok` is False loaded as 0."""
    if EVEN_D:
        return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    else:
        return tl.load(ptrs, mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)


@triton.jit
def _allowed(q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, k_pos, k_doc, k_seg, k_mod, k_grp, window,
             HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """The contract's rule on broadcastable operands (either [M,1]x[1,N] or [1,M]x[N,1]).

    Padding and out-of-range tokens carry doc -2 (queries) / -1 (keys), so never match.
    """
    look = (q_seg == k_seg) & (((q_bits >> k_mod) & 1) != 0)
    if HAS_GROUPS:
        look = look | ((q_grp == k_grp) & (((q_gbits >> k_mod) & 1) != 0))
    causal = k_pos <= q_pos
    if HAS_WINDOW:
        causal = causal & (q_pos - k_pos < window)
    return (q_doc == k_doc) & (causal | look)


@triton.jit
def _allowed_before(k_doc, q_doc):
    """The rule for keys at or before every row of the tile (no window): the key lies in the row's document
    (DOC run index; padding keys hold -1, padding rows -2: never equal). One compare per pair."""
    return k_doc == q_doc


@triton.jit
def _allowed_span(q_pos, q_lo, q_hi, q_bits, k_pos, k_eff, k_bit, AFTER: tl.constexpr = False,
                  LOOK: tl.constexpr = True):
    """The contract's rule for plain MMA (no groups, no window) from position bounds, on broadcastable
    operands (either [M,1]x[1,N] or [1,M]x[N,1]), positions relative to any common origin.

    Query: position, KV_LO (its document's first key), KV_HI (its last allowed key: itself, or the last key
    of its segment of a modality it may look ahead at) and QBITS; for padding rows and rows past Lq the
    caller passes q_pos = q_hi = q_lo (any value above every key's k_eff) and QBITS 0. Key: position,
    `k_eff` (its position; for padding, below every KV_LO; keys past Lk need nothing: they lie past every
    KV_HI and q) and `k_bit` = 1 << KMOD (KMOD = PAD_MOD = 31 for padding: no QBITS bit). Allowed iff ``KV_LO <= k_eff <= (QBITS & k_bit ? KV_HI : q)``:
    keys from the document's start up to q are causal; a key past q and up to KV_HI lies in q's segment
    (segments are contiguous runs, padding aside, inside one document), where the policy bit decides; keys
    past KV_HI are outside q's segment or of a modality it does not look at. One unsigned range compare.
    AFTER (every key after every row: the look-ahead tiles) drops the lower bound, which any key past q
    meets, and needs only ``QBITS & k_bit`` and ``k <= KV_HI``. LOOK=False (no row of the tile looks ahead:
    QBITS 0) leaves causal attention inside the document: ``KV_LO <= k_eff <= q``.
    """
    if AFTER:
        return ((q_bits & k_bit) != 0) & (k_pos <= q_hi)
    else:
        t = (k_eff - q_lo).to(tl.uint32, bitcast=True)
        if LOOK:
            return t <= tl.where((q_bits & k_bit) != 0, q_hi - q_lo, q_pos - q_lo).to(tl.uint32, bitcast=True)
        else:
            return t <= (q_pos - q_lo).to(tl.uint32, bitcast=True)


@triton.jit
def _allowed_causal(q_pos, k_pos):
    """Causal attention inside one document, for tiles whose keys hold no padding and lie at or after every
    row's document start: ``k <= q``; callers pass q = -1 - (tile start) (below every key) for padding rows."""
    return k_pos <= q_pos


@triton.jit
def _allowed_doc_span(q_pos, q_doc, q_hi, q_bits, k_pos, k_doc, k_bit):
    """`_allowed_span`'s rule with the lower bound taken by document instead of KV_LO, on broadcastable operands
    (either [M,1]x[1,N] or [1,M]x[N,1]), positions relative to any common origin: the key lies in the row's
    document (DOC: padding keys hold -1, padding rows and rows past Lq -2, never equal) and
    ``k <= (QBITS & k_bit ? KV_HI : q)``. No KV_LO per row and no k_eff per key: the dK/dV kernel's masked
    loop below the fully allowed rows reads DOC, KV_HI, QBITS per row and DOC, KMOD per key."""
    return (q_doc == k_doc) & (k_pos <= tl.where((q_bits & k_bit) != 0, q_hi, q_pos))


@triton.jit
def _span_query_bounds(meta_b, smf, q_pos, row_ok, q_doc, Lk):
    """Position, KV_LO and KV_HI of the rows as `_allowed_span` takes them: padding rows and rows past Lq
    (DOC < 0) get all three = Lk (KV_LO is Lk there already; their QBITS are 0)."""
    q_lo = tl.load(meta_b + 4 * smf + q_pos, mask=row_ok, other=Lk)
    q_hi = tl.load(meta_b + 5 * smf + q_pos, mask=row_ok, other=Lk)
    real = q_doc >= 0
    return tl.where(real, q_pos, Lk), q_lo, tl.where(real, q_hi, Lk)


@triton.jit
def _span_key_fields(meta_b, smf, start, offs_n, Lk, AFTER: tl.constexpr):
    """From KMOD alone (PAD_MOD = 31 for padding), relative to `start`: k_eff (`offs_n`; -1 - start, below every
    KV_LO, for padding), k_bit (1 << KMOD: bit 31, in no QBITS, for padding) and whether the key is a real one
    (not padding, before Lk: the V mask). The diagonal tiles read key Lk - 1's KMOD for keys past Lk (cheaper
    than a masked load where the loop pipeline stages it through shared memory): the rule excludes them by
    position (past every KV_HI and q). The look-ahead tiles load KMOD 31 there."""
    k_pos = start + offs_n
    if AFTER:  # the look-ahead loop is not pipelined: a masked load costs less than clamped addresses
        k_mod = tl.load(meta_b + 2 * smf + k_pos, mask=k_pos < Lk, other=31)
        return offs_n, 1 << k_mod, k_mod != 31
    else:
        k_mod = tl.load(meta_b + 2 * smf + tl.minimum(k_pos, Lk - 1))
        return tl.where(k_mod != 31, offs_n, -1 - start), 1 << k_mod, (k_mod != 31) & (k_pos < Lk)


@triton.jit
def _load_query_fields(meta_b, smf, pos, ok, HAS_GROUPS: tl.constexpr):
    doc = tl.load(meta_b + 0 * smf + pos, mask=ok, other=-2)
    doc = tl.where(doc < 0, -2, doc)
    seg = tl.load(meta_b + 1 * smf + pos, mask=ok, other=-1)
    bits = tl.load(meta_b + 3 * smf + pos, mask=ok, other=0)
    if HAS_GROUPS:
        grp = tl.load(meta_b + 10 * smf + pos, mask=ok, other=-1)
        gbits = tl.load(meta_b + 11 * smf + pos, mask=ok, other=0)
    else:  # unused
        grp = seg
        gbits = bits
    return doc, seg, bits, grp, gbits


@triton.jit
def _load_key_fields(meta_b, smf, pos, ok, HAS_GROUPS: tl.constexpr):
    doc = tl.load(meta_b + 0 * smf + pos, mask=ok, other=-1)
    seg = tl.load(meta_b + 1 * smf + pos, mask=ok, other=-1)
    mod = tl.load(meta_b + 2 * smf + pos, mask=ok, other=0)
    if HAS_GROUPS:
        grp = tl.load(meta_b + 10 * smf + pos, mask=ok, other=-1)
    else:  # unused
        grp = seg
    return doc, seg, mod, grp


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
def _bit_or(a, b):
    return a | b


@triton.jit
def _look_bits(q_bits, q_gbits, HAS_GROUPS: tl.constexpr):
    """Modalities any row of the block may look ahead at (bitmask; padding rows hold 0)."""
    bits = q_bits
    if HAS_GROUPS:
        bits = bits | q_gbits
    return tl.reduce(bits, 0, _bit_or)


@triton.jit
def _diagonal_kind(pad_b, q_doc, q_lo, q_bits, q_gbits, f_hi, c_hi, Lk, BLOCK_N: tl.constexpr,
                   HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Which rule the diagonal tiles [f_hi, c_hi) of a row block need: 0 the general one (look-ahead bits, or
    groups or a window); 1 the causal form of `_allowed_span` (no row looks ahead); 2 plain causal attention,
    `_allowed_causal` (besides, these keys lie inside [0, Lk) with no padding among them (two `padcum` loads),
    and every row's document starts at or before them): no key field and no load mask at all."""
    if HAS_GROUPS or HAS_WINDOW:
        return 0
    else:
        a = tl.minimum(f_hi * BLOCK_N, Lk)
        b = tl.maximum(tl.minimum(c_hi * BLOCK_N, Lk), a)
        pads = tl.load(pad_b + b) - tl.load(pad_b + a)
        inside = (tl.max(tl.where(q_doc >= 0, q_lo, 0), 0) <= f_hi * BLOCK_N) & (c_hi * BLOCK_N <= Lk)
        no_look = _look_bits(q_bits, q_gbits, HAS_GROUPS) == 0
        return tl.where(no_look, tl.where((pads == 0) & inside, 2, 1), 0)


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
def _tile_key_fields(meta_b, smf, start, offs_n, Lk, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     BEFORE: tl.constexpr, AFTER: tl.constexpr, NOPAD: tl.constexpr):
    """The key fields a masked query-side tile's rule reads (`_tile_allowed`; fields it does not read hold a
    placeholder), and which keys are real (not padding, before Lk)."""
    k_pos = start + offs_n
    k_doc, k_seg, k_mod, k_grp, k_eff, k_bit = k_pos, k_pos, k_pos, k_pos, k_pos, k_pos  # placeholders
    if BEFORE:  # inside [0, Lk): no key bound
        k_doc = tl.load(meta_b + k_pos)
        k_real = k_doc >= 0
    elif NOPAD:  # inside [0, Lk), no padding (`_diagonal_kind`): no key field, no load mask
        k_real = k_pos < Lk  # unused
    elif not (HAS_GROUPS or HAS_WINDOW):
        k_eff, k_bit, k_real = _span_key_fields(meta_b, smf, start, offs_n, Lk, AFTER)
    else:
        k_doc, k_seg, k_mod, k_grp = _load_key_fields(meta_b, smf, k_pos, k_pos < Lk, HAS_GROUPS)
        k_real = k_doc >= 0  # -1 past Lk too
    return k_pos, k_doc, k_seg, k_mod, k_grp, k_eff, k_bit, k_real


@triton.jit
def _tile_allowed(q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, offs_n, k_pos, k_doc, k_seg,
                  k_mod, k_grp, k_eff, k_bit, window, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                  BEFORE: tl.constexpr, AFTER: tl.constexpr, LOOK: tl.constexpr, NOPAD: tl.constexpr):
    """[BLOCK_M, BLOCK_N] allowed pairs of a masked query-side tile (forward, dQ), by the cheapest exact rule
    for the loop it is in: BEFORE document equality, NOPAD plain causal, plain MMA `_allowed_span`, groups or a
    window `_allowed`."""
    if BEFORE:
        return _allowed_before(k_doc[None, :], q_doc[:, None])
    elif NOPAD:
        return _allowed_causal(tl.where(q_doc >= 0, q_pos - start, -1 - start)[:, None], offs_n[None, :])
    elif not (HAS_GROUPS or HAS_WINDOW):
        return _allowed_span((q_pos - start)[:, None], (q_lo - start)[:, None], (q_hi - start)[:, None],
                             q_bits[:, None], offs_n[None, :], k_eff[None, :], k_bit[None, :], AFTER, LOOK)
    else:
        return _allowed(q_pos[:, None], q_doc[:, None], q_seg[:, None], q_bits[:, None], q_grp[:, None],
                        q_gbits[:, None], k_pos[None, :], k_doc[None, :], k_seg[None, :], k_mod[None, :],
                        k_grp[None, :], window, HAS_GROUPS, HAS_WINDOW)


# ----------------------------------------------------------------------------- forward
@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
              q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, Lk, D, qk_scale, window,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
              UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr = False,
              BEFORE: tl.constexpr = False, AFTER: tl.constexpr = False, LOOK: tl.constexpr = True,
              NOPAD: tl.constexpr = False):
    """One key tile. Masked tiles: BEFORE (keys at or before every row), AFTER (keys after every row: the
    look-ahead tiles), else the diagonal ones (LOOK=False: of a row block that looks ahead at nothing);
    plain MMA evaluates `_allowed_span`, groups or a window `_allowed`."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    k_ptrs = k_base + tl.cast(start, tl.int64) * skn + offs_n[:, None] * skn + offs_d[None, :]
    v_ptrs = v_base + tl.cast(start, tl.int64) * svn + offs_n[:, None] * svn + offs_d[None, :]
    if MASKED:
        k_pos, k_doc, k_seg, k_mod, k_grp, k_eff, k_bit, k_real = _tile_key_fields(
            meta_b, smf, start, offs_n, Lk, HAS_GROUPS, HAS_WINDOW, BEFORE, AFTER, NOPAD)
        # K needs no padding mask: a padding key's scores (NaN or inf if K holds them) are replaced by -inf
        # before any use. BEFORE tiles lie inside [0, Lk) (see `_lookahead_split`): no mask at all.
        if BEFORE or NOPAD:
            k = _load_rows(k_ptrs, offs_d, D, EVEN_D)
        else:
            k = _load_some_rows(k_ptrs, offs_d, D, start + offs_n < Lk, EVEN_D)
    else:  # a plain tile lies inside [0, Lk) (see `_key_block_ranges`): only the head dim can need a mask
        k = _load_rows(k_ptrs, offs_d, D, EVEN_D)
    qk = _mm(q, tl.trans(k), None, DOT_PREC, UPCAST)
    # the scale folded into the row max (qk_scale > 0): one FMA per score, as the Triton tutorial does
    if MASKED:
        ok = _tile_allowed(q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, offs_n, k_pos, k_doc, k_seg,
                           k_mod, k_grp, k_eff, k_bit, window, HAS_GROUPS, HAS_WINDOW, BEFORE, AFTER, LOOK, NOPAD)
        qk = tl.where(ok, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:  # every score of a plain tile is finite (padding and out-of-range rows load q = 0): so is m_new
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = m_new
    p = tl.math.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED and not NOPAD:  # padding keys load V as 0: p is 0 there, and 0 * (NaN or inf) would not be
        v = _load_some_rows(v_ptrs, offs_d, D, k_real, EVEN_D)
    else:
        v = _load_rows(v_ptrs, offs_d, D, EVEN_D)
    acc = acc * alpha[:, None]
    acc = _mm(_cast(p, v.dtype, UPCAST), v, acc, DOT_PREC, UPCAST)
    return acc, l_i, m_new


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
               q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, n_hi, Lk, D, qk_scale, window,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
               UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr = False,
              BEFORE: tl.constexpr = False, LOOK: tl.constexpr = True, NOPAD: tl.constexpr = False):
    for n in range(n_lo, n_hi):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                  q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n * BLOCK_N, Lk, D, qk_scale, window,
                                  BLOCK_N, BLOCK_D, MASKED, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, BEFORE, False, LOOK,
                                  NOPAD)
    return acc, l_i, m_i


@triton.jit
def _fwd_look_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                    q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, a_lo, n_hi, Lk, D, qk_scale, window,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
                    UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr, EVEN_D: tl.constexpr = False):
    """The look-ahead tiles [a_lo, n_hi), hopping over runs of modalities no row looks ahead at."""
    bits = _look_bits(q_bits, q_gbits, HAS_GROUPS)
    n = _next_look_block(meta_b, smf, a_lo, n_hi, bits, BLOCK_N)
    while n < n_hi:
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                  q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n * BLOCK_N, Lk, D, qk_scale, window,
                                  BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, False, True)
        n = _next_look_block(meta_b, smf, n + 1, n_hi, bits, BLOCK_N)
    return acc, l_i, m_i


@triton.jit
def mma_fwd_kernel(Q, K, V, O, LSE, MROW, LINV, META, PADCUM, WIN,
                   sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
                   smb, smf, spb, swb, swf, Hq, Lq, Lk, D, GROUP, qk_scale, window, LQ_BUCKET,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
                   UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   SPLIT_STATS: tl.constexpr, EXACT_DELTA: tl.constexpr, EVEN_D: tl.constexpr = False, QPOS=None,
                   HAS_QPOS: tl.constexpr = False):
    """HAS_QPOS: query row r sits at absolute position QPOS[r] (int32, increasing), not Lk - Lq + r."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // GROUP
    off = Lk - Lq
    row_start = pid_m * BLOCK_M
    rows = row_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
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

    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + row_start.to(tl.int64) * sqm
    tile_ok = row_ok[:, None] & (offs_d < D)[None, :]
    q_ok = tile_ok & (q_doc >= 0)[:, None]  # padding query rows load as 0, whatever q holds
    q = tl.load(q_base + tl.arange(0, BLOCK_M)[:, None] * sqm + offs_d[None, :], mask=q_ok, other=0.0)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                               q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, f_lo, Lk, D, qk_scale, window,
                               BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, not HAS_WINDOW)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                               q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_lo, f_hi, Lk, D, qk_scale, window,
                               BLOCK_N, BLOCK_D, False, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D)
    # the diagonal tiles; a row block that looks ahead at nothing (the common case) runs them with the causal rule
    diag = _diagonal_kind(pad_b, q_doc, q_lo, q_bits, q_gbits, f_hi, c_hi, Lk, BLOCK_N, HAS_GROUPS, HAS_WINDOW)
    if diag == 2:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi, c_hi, Lk, D, qk_scale,
                                   window, BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, False,
                                   False, True)
    elif diag == 1:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi, c_hi, Lk, D, qk_scale,
                                   window, BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D, False,
                                   False)
    else:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                   q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi, c_hi, Lk, D, qk_scale,
                                   window, BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D)
    acc, l_i, m_i = _fwd_look_tiles(acc, l_i, m_i, q, k_base, v_base, skn, svn, meta_b, smf,
                                    q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, a_lo, n_hi, Lk, D, qk_scale, window,
                                    BLOCK_N, BLOCK_D, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, EVEN_D)

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


# ----------------------------------------------------------------------------- backward
@triton.jit
def _dq_tile(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, Lk, D, qk_scale, window,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
             UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
             SPLIT_STATS: tl.constexpr, DELTA_PASS: tl.constexpr, EVEN_D: tl.constexpr = False,
             BEFORE: tl.constexpr = False, AFTER: tl.constexpr = False, LOOK: tl.constexpr = True,
              NOPAD: tl.constexpr = False):
    """One key tile: dq += dS @ K; with DELTA_PASS, only dsum += rowsum(P * dP). Masked tiles as in `_fwd_tile`."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    k_ptrs = k_base + tl.cast(start, tl.int64) * skn + offs_n[:, None] * skn + offs_d[None, :]
    v_ptrs = v_base + tl.cast(start, tl.int64) * svn + offs_n[:, None] * svn + offs_d[None, :]
    if MASKED:  # padding keys load K and V as 0: both meet p = 0 in a product (dS @ K, dO @ V^T)
        k_pos, k_doc, k_seg, k_mod, k_grp, k_eff, k_bit, k_real = _tile_key_fields(
            meta_b, smf, start, offs_n, Lk, HAS_GROUPS, HAS_WINDOW, BEFORE, AFTER, NOPAD)
        if NOPAD:
            k = _load_rows(k_ptrs, offs_d, D, EVEN_D)
            v = _load_rows(v_ptrs, offs_d, D, EVEN_D)
        else:
            k = _load_some_rows(k_ptrs, offs_d, D, k_real, EVEN_D)
            v = _load_some_rows(v_ptrs, offs_d, D, k_real, EVEN_D)
    else:  # a plain tile lies inside [0, Lk): only the head dim can need a mask
        k = _load_rows(k_ptrs, offs_d, D, EVEN_D)
        v = _load_rows(v_ptrs, offs_d, D, EVEN_D)
    qk = _mm(q, tl.trans(k), None, DOT_PREC, UPCAST) * qk_scale
    if SPLIT_STATS:  # lse2 holds the row max; linv 1/l (0 on rows whose ds is exactly 0)
        p = tl.math.exp2(qk - lse2[:, None]) * linv[:, None]
    else:
        p = tl.math.exp2(qk - lse2[:, None])
    if MASKED:
        ok = _tile_allowed(q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, offs_n, k_pos, k_doc, k_seg,
                           k_mod, k_grp, k_eff, k_bit, window, HAS_GROUPS, HAS_WINDOW, BEFORE, AFTER, LOOK, NOPAD)
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
              BEFORE: tl.constexpr = False, LOOK: tl.constexpr = True, NOPAD: tl.constexpr = False):
    for n in range(n_lo, n_hi):
        dq, dsum = _dq_tile(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                            q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n * BLOCK_N, Lk, D, qk_scale, window,
                            BLOCK_N, BLOCK_D, MASKED, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS, EVEN_D, BEFORE,
                            False, LOOK, NOPAD)
    return dq, dsum


@triton.jit
def _dq_pass(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf, pad_b,
             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, f_lo, f_hi, c_hi, a_lo, n_hi, Lk, D, qk_scale, window,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
             UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
             SPLIT_STATS: tl.constexpr, DELTA_PASS: tl.constexpr, EVEN_D: tl.constexpr = False):
    """Every tile of the row block: masked [n_lo, f_lo), plain [f_lo, f_hi), masked [f_hi, c_hi), then the
    look-ahead tiles from a_lo, hopping as `_fwd_look_tiles` does."""
    dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                         q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, f_lo, Lk, D, qk_scale, window,
                         BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS, EVEN_D, not HAS_WINDOW)
    dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                         q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_lo, f_hi, Lk, D, qk_scale, window,
                         BLOCK_N, BLOCK_D, False, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS, EVEN_D)
    diag = _diagonal_kind(pad_b, q_doc, q_lo, q_bits, q_gbits, f_hi, c_hi, Lk, BLOCK_N, HAS_GROUPS, HAS_WINDOW)
    if diag == 2:  # the diagonal tiles, by rule as in the forward
        dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi, c_hi, Lk, D, qk_scale, window,
                             BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS,
                             EVEN_D, False, False, True)
    elif diag == 1:
        dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi, c_hi, Lk, D, qk_scale, window,
                             BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS,
                             EVEN_D, False, False)
    else:
        dq, dsum = _dq_tiles(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                             q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, f_hi, c_hi, Lk, D, qk_scale, window,
                             BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS,
                             EVEN_D)
    bits = _look_bits(q_bits, q_gbits, HAS_GROUPS)
    n = _next_look_block(meta_b, smf, a_lo, n_hi, bits, BLOCK_N)
    while n < n_hi:
        dq, dsum = _dq_tile(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf,
                            q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n * BLOCK_N, Lk, D, qk_scale, window,
                            BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS, DELTA_PASS, EVEN_D,
                            False, True)
        n = _next_look_block(meta_b, smf, n + 1, n_hi, bits, BLOCK_N)
    return dq, dsum


@triton.jit
def mma_bwd_dq_kernel(Q, K, V, DO, DQ, LSE2, LINV, DELTA, META, PADCUM, WIN,
                      sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm,
                      smb, smf, spb, swb, swf, Hq, Lq, Lk, D, GROUP, qk_scale, sm_scale, window, zero_single,
                      LQ_BUCKET, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                      SPLIT_STATS: tl.constexpr, EXACT_DELTA: tl.constexpr, EVEN_D: tl.constexpr = False, QPOS=None,
                      HAS_QPOS: tl.constexpr = False):
    """dQ for one block of query rows. DQ is contiguous [B, Hq, Lq, D]; DO has strides sd*.
    HAS_QPOS: query row r sits at absolute position QPOS[r] (int32, increasing), not Lk - Lq + r."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // GROUP
    off = Lk - Lq
    row_start = pid_m * BLOCK_M
    rows = row_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
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

    tile_ok = row_ok[:, None] & (offs_d < D)[None, :]
    ridx = tl.arange(0, BLOCK_M)[:, None]
    row_valid = row_ok & (q_doc >= 0)  # padding query rows load q, dO, delta as 0: zero dq whatever they hold
    q_ok = row_valid[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + row_start.to(tl.int64) * sqm + ridx * sqm + offs_d[None, :],
                mask=q_ok, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + row_start.to(tl.int64) * sdm + ridx * sdm + offs_d[None, :],
                 mask=q_ok, other=0.0)
    lse2 = tl.load(LSE2 + pid_bh.to(tl.int64) * Lq + rows, mask=row_valid, other=float("inf"))
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * Lq + rows, mask=row_valid, other=0.0)
    linv = tl.zeros([BLOCK_M], tl.float32)
    if SPLIT_STATS:
        linv = tl.load(LINV + pid_bh.to(tl.int64) * Lq + rows, mask=row_valid, other=0.0)
        # a row that sees one key (l == 1) has ds = 0 exactly: say so rather than leave rounding noise
        linv = tl.where((linv == 1.0) & (zero_single != 0), 0.0, linv)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dsum = tl.zeros([BLOCK_M], tl.float32)
    if EXACT_DELTA:
        # fp32: delta = rowsum(P * dP) from this kernel's own P and dP, as softmax's backward computes it,
        # not rowsum(dO * O): when one key dominates dP - delta cancels, and only matching roundings
        # keep that within plain PyTorch's error. One extra pass (QK^T and dO V^T) over the row's keys.
        dq, dsum = _dq_pass(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf, pad_b,
                            q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, f_lo, f_hi, c_hi, a_lo, n_hi, Lk, D,
                            qk_scale, window, BLOCK_N, BLOCK_D, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                            True, EVEN_D)
        delta = delta + dsum  # DELTA came in holding -dlse (or 0)
        tl.store(DELTA + pid_bh.to(tl.int64) * Lq + rows, delta, mask=row_ok)  # for the dK/dV kernel
    dq, dsum = _dq_pass(dq, dsum, q, do, lse2, linv, delta, k_base, v_base, skn, svn, meta_b, smf, pad_b,
                        q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, n_lo, f_lo, f_hi, c_hi, a_lo, n_hi, Lk, D,
                        qk_scale, window, BLOCK_N, BLOCK_D, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                        False, EVEN_D)
    dq_base = DQ + pid_bh.to(tl.int64) * Lq * D + row_start.to(tl.int64) * D
    tl.store(dq_base + ridx * D + offs_d[None, :], _cast(dq * sm_scale, DQ.dtype.element_ty, UPCAST), mask=tile_ok)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, linv_base, delta_base, sqm, sdm, meta_b, smf,
                key_start, m_lo, m_hi, Lq, Lk, D, qk_scale, window, zero_single,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
                DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                SPLIT_STATS: tl.constexpr, BEFORE: tl.constexpr = False):
    """Row blocks [m_lo, m_hi) of one key block, in the transposed orientation ([BLOCK_N keys, BLOCK_M rows]).
    Masked loops: BEFORE (rows at or after every key: the loop above the fully allowed rows, see
    `_query_block_ranges`: in that case only when the block has fully allowed rows) needs only the document
    bound; else plain MMA evaluates `_allowed_doc_span` (operands broadcast [1, M] x [N, 1]), groups or a
    window `_allowed`."""
    offs_d = tl.arange(0, BLOCK_D)
    off = Lk - Lq
    if MASKED:  # the keys' fields are loaded here, live only across a masked loop (not the group loop)
        offs_n = tl.arange(0, BLOCK_N)
        k_pos = key_start + offs_n
        if BEFORE:
            k_doc = tl.load(meta_b + k_pos, mask=k_pos < Lk, other=-1)
        elif not (HAS_GROUPS or HAS_WINDOW):
            k_doc = tl.load(meta_b + k_pos, mask=k_pos < Lk, other=-1)
            k_bit = 1 << tl.load(meta_b + 2 * smf + k_pos, mask=k_pos < Lk, other=31)
        else:
            k_doc, k_seg, k_mod, k_grp = _load_key_fields(meta_b, smf, k_pos, k_pos < Lk, HAS_GROUPS)
    for m in range(m_lo, m_hi):
        start = m * BLOCK_M
        offs_m = tl.arange(0, BLOCK_M)
        rows = start + offs_m
        row_ok = rows < Lq
        if MASKED:  # padding query rows (only ever in masked tiles) load as 0, whatever q/dO hold
            if BEFORE or not (HAS_GROUPS or HAS_WINDOW):
                q_doc = tl.load(meta_b + rows + off, mask=row_ok, other=-2)
                q_doc = tl.where(q_doc < 0, -2, q_doc)
                if not BEFORE:
                    q_hi = tl.load(meta_b + 5 * smf + rows + off, mask=row_ok, other=0)
                    q_bits = tl.load(meta_b + 3 * smf + rows + off, mask=row_ok, other=0)
            else:
                q_doc, q_seg, q_bits, q_grp, q_gbits = _load_query_fields(meta_b, smf, rows + off, row_ok, HAS_GROUPS)
            row_ok = row_ok & (q_doc >= 0)
        tile_ok = row_ok[:, None] & (offs_d < D)[None, :]
        q = tl.load(q_base + start.to(tl.int64) * sqm + offs_m[:, None] * sqm + offs_d[None, :], mask=tile_ok, other=0.0)
        do = tl.load(do_base + start.to(tl.int64) * sdm + offs_m[:, None] * sdm + offs_d[None, :], mask=tile_ok, other=0.0)
        lse2 = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        qkT = _mm(k, tl.trans(q), None, DOT_PREC, UPCAST) * qk_scale  # [BLOCK_N, BLOCK_M]
        if SPLIT_STATS:  # lse2 holds the row max: p = exp2(s - m) / l
            linv = tl.load(linv_base + rows, mask=row_ok, other=0.0)
            pT = tl.math.exp2(qkT - lse2[None, :]) * linv[None, :]
        else:
            pT = tl.math.exp2(qkT - lse2[None, :])
        if MASKED:
            if BEFORE:
                ok = _allowed_before(k_doc[:, None], q_doc[None, :])
            elif not (HAS_GROUPS or HAS_WINDOW):
                ok = _allowed_doc_span((rows + off - key_start)[None, :], q_doc[None, :], (q_hi - key_start)[None, :],
                                       q_bits[None, :], offs_n[:, None], k_doc[:, None], k_bit[:, None])
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


@triton.jit
def mma_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE2, LINV, DELTA, META, PADCUM, WIN,
                        sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm,
                        smb, smf, spb, swb, swf, Hq, Hkv, Lq, Lk, D, GROUP, qk_scale, sm_scale, window, zero_single,
                        h_base, h_launch,
                        LQ_BUCKET, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, HAS_GROUPS: tl.constexpr,
                        HAS_WINDOW: tl.constexpr, SPLIT_STATS: tl.constexpr, EXACT_DELTA: tl.constexpr,
                        EVEN_D: tl.constexpr = False, SPLIT_GROUP: tl.constexpr = False, QPOS=None,
                        HAS_QPOS: tl.constexpr = False):
    """dK, dV for one block of keys of one KV head, summed over the GROUP query heads sharing it.

    SPLIT_GROUP: one program per block of keys and *query* head instead (no loop over the group), for the
    h_launch query heads from h_base, writing that head's fp32 share into DK/DV shaped [B, h_launch, Lk, D];
    the launcher sums the GROUP shares (and launches again for the next heads, to bound that buffer). Without
    the group loop nothing is live across heads: this is what keeps the wgmma tiles spill-free under GQA
    (benchmarks/results/static/CHANGES.md, "dK/dV spills").

    HAS_QPOS: query row r sits at absolute position QPOS[r] (int32, increasing); QPOS[Lq:] holds per key, for
    each batch row, the first and last query row that may see it ([B, 2, Lk], from `Q_LO`/`Q_HI` by a search in
    the positions): the row blocks to visit. Those tiles all run masked (`_dkdv_tiles_at`)."""
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
        m_hi = tl.where(nonempty, m_hi // BLOCK_M + 1, 0)
        m_lo = tl.where(nonempty, m_lo // BLOCK_M, 0)
        f_lo = m_hi
        f_hi = m_hi
    else:
        m_lo, f_lo, f_hi, m_hi = _query_block_ranges(meta_b, smf, pad_b, key_start, Lq, Lk, BLOCK_M, BLOCK_N,
                                                     win_b, swf, window, HAS_WINDOW)
    # padding keys load as 0, whatever K/V hold
    k_doc = tl.load(meta_b + k_pos, mask=key_ok, other=-1)
    kv_ok = (key_ok & (k_doc >= 0))[:, None] & (offs_d < D)[None, :]
    k = tl.load(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + key_start.to(tl.int64) * skn
                + offs_n[:, None] * skn + offs_d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + key_start.to(tl.int64) * svn
                + offs_n[:, None] * svn + offs_d[None, :], mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(heads):
        h = h0 + g
        q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        do_base = DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        row_base = (b * Hq + h).to(tl.int64) * Lq
        if HAS_QPOS:
            dk, dv = _dkdv_tiles_at(dk, dv, k, v, q_base, do_base, LSE2 + row_base, LINV + row_base,
                                    DELTA + row_base, sqm, sdm, meta_b, smf, QPOS, key_start, m_lo, m_hi, Lq, Lk, D,
                                    qk_scale, window, zero_single, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PREC, UPCAST,
                                    HAS_GROUPS, HAS_WINDOW, SPLIT_STATS)
        else:
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE2 + row_base, LINV + row_base, DELTA + row_base,
                                 sqm, sdm, meta_b, smf,
                                 key_start, m_lo, f_lo, Lq, Lk, D, qk_scale, window, zero_single,
                                 BLOCK_M, BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS)
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE2 + row_base, LINV + row_base, DELTA + row_base,
                                 sqm, sdm, meta_b, smf,
                                 key_start, f_lo, f_hi, Lq, Lk, D, qk_scale, window, zero_single,
                                 BLOCK_M, BLOCK_N, BLOCK_D, False, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS)
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE2 + row_base, LINV + row_base, DELTA + row_base,
                                 sqm, sdm, meta_b, smf,
                                 key_start, f_hi, m_hi, Lq, Lk, D, qk_scale, window, zero_single,
                                 BLOCK_M, BLOCK_N, BLOCK_D, True, DOT_PREC, UPCAST, HAS_GROUPS, HAS_WINDOW, SPLIT_STATS,
                                 not HAS_WINDOW)
    out_base = pid_bh.to(tl.int64) * Lk * D + key_start.to(tl.int64) * D
    ptrs = offs_n[:, None] * D + offs_d[None, :]
    tile_ok = (key_start + offs_n < Lk)[:, None] & (offs_d < D)[None, :]  # recomputed: not live across the loops
    if SPLIT_GROUP:  # fp32 shares, summed (then rounded once) by the launcher
        tl.store(DK + out_base + ptrs, dk * sm_scale, mask=tile_ok)
        tl.store(DV + out_base + ptrs, dv, mask=tile_ok)
    else:
        tl.store(DK + out_base + ptrs, _cast(dk * sm_scale, DK.dtype.element_ty, UPCAST), mask=tile_ok)
        tl.store(DV + out_base + ptrs, _cast(dv, DV.dtype.element_ty, UPCAST), mask=tile_ok)
