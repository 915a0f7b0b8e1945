"""The contract's mask rule inside a tile, from the O(L) fields of `MMAMask.meta`.

Field rows of META (per batch row, stride ``smf`` between fields):
0 DOC, 1 SEG, 2 KMOD, 3 QBITS, 4 KV_LO, 5 KV_HI, 6 Q_LO, 7 Q_HI, 8 LA_LO, 9 MOD_NEXT, and with groups 10 GRP,
11 GBITS. WIN (only read when HAS_WINDOW) holds the per-window bounds of `MMAMask.window_fields`: 0 KV_LO and
1 Q_HI under the window. `_allowed` is the full rule; the others are exact shortcuts for the tiles of one
loop kind (before the diagonal, look-ahead, causal-only), chosen by `_tile_allowed`. A ``# rule: NAME`` comment
marks the line of each form's compare: `python -m benchmarks.static` names a masked loop by the marks its machine
code comes from (`benchmarks.static.sass.rule_lines`), and `benchmarks.tiles` counts tiles under the same names."""
import triton
import triton.language as tl


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
    return (q_doc == k_doc) & (causal | look)  # rule: general


@triton.jit
def _allowed_before(k_doc, q_doc):
    """The rule for keys at or before every row of the tile (no window): the key lies in the row's document
    (DOC run index; padding keys hold -1, padding rows -2: never equal). One compare per pair."""
    return k_doc == q_doc  # rule: before


@triton.jit
def _allowed_span(q_pos, q_lo, q_hi, q_bits, k_pos, k_eff, k_bit, AFTER: tl.constexpr = False,
                  LOOK: tl.constexpr = True):
    """The contract's rule for plain MMA (no groups, no window) from position bounds, on broadcastable
    operands (either [M,1]x[1,N] or [1,M]x[N,1]), positions relative to any common origin.

    Query: position, KV_LO (its document's first key), KV_HI (its last allowed key: itself, or the last key
    of its segment of a modality it may look ahead at) and QBITS; for padding rows and rows past Lq the
    caller passes q_pos = q_hi = q_lo (any value above every key's k_eff) and QBITS 0. Key: position,
    `k_eff` (its position; for padding, below every KV_LO; keys past Lk need nothing: they lie past every
    KV_HI and q) and `k_bit`, 1 if the block's look-ahead rows look at its modality, else 0 (padding: 0).
    Allowed iff ``KV_LO <= k_eff <= q + k_bit * (KV_HI - q)``: keys from the document's start up to q are
    causal; a key past q and up to KV_HI lies in q's segment (segments are contiguous runs, padding aside,
    inside one document), where the policy pairs the two modalities iff the row looks ahead at all (else
    KV_HI = q) and k_bit: exact for a uniform policy (every row that looks ahead looks at the same
    modalities: see `MMAMask`, which sends any other to `_allowed`); keys past KV_HI are outside q's segment.
    One unsigned range compare, after one multiply-add per pair.
    AFTER (every key after every row: the look-ahead tiles) drops the lower bound, which any key past q
    meets, and the bit test too: `_span_key_fields` folds it into the key, k_eff = its position if the key's
    modality is one the block's look-ahead rows look at, else BIG, so one compare ``k_eff <= KV_HI`` decides
    (exact because the policy is uniform, see `MMAMask`: every row that looks ahead at all looks at the same
    modalities, and a row that does not has KV_HI = q, before every key of the tile). LOOK=False (no row of
    the tile looks ahead: QBITS 0) leaves causal attention inside the document: ``KV_LO <= k_eff <= q``.
    """
    if AFTER:
        return k_eff <= q_hi  # rule: look-ahead
    else:
        t = (k_eff - q_lo).to(tl.uint32, bitcast=True)
        if LOOK:
            return t <= ((q_pos - q_lo) + k_bit * (q_hi - q_pos)).to(tl.uint32, bitcast=True)  # rule: span
        else:
            return t <= (q_pos - q_lo).to(tl.uint32, bitcast=True)  # rule: span-causal


@triton.jit
def _allowed_look(P, H, k, kf):
    """Plain MMA under a uniform policy (see `_allowed_span`'s AFTER) for diagonal tiles whose keys hold no
    padding and lie at or after every row's document start, on broadcastable operands, positions relative to
    any common origin: ``k <= P + kf * (H - P)``, P the row's position (-1 - origin for padding rows: their H
    is -1 - origin too, see `_span_query_bounds`), H its KV_HI, kf 1 if the block's look-ahead rows look at
    the key's modality, else 0. Keys up to the row are causal; a key past it and up to KV_HI lies in its
    segment, allowed iff the row looks ahead at all (else H = P) and at the key's modality. One compare per
    pair (a multiply-add ahead of it): an `or` of two compares would cost two selects per score."""
    return k <= P + kf * (H - P)  # rule: look


@triton.jit
def _allowed_causal(q_pos, k_pos):
    """Causal attention inside one document, for tiles whose keys hold no padding and lie at or after every
    row's document start: ``k <= q``; callers pass q = -1 - (tile start) (below every key) for padding rows."""
    return k_pos <= q_pos  # rule: causal


@triton.jit
def _allowed_key_span(P, LO, H, k, kf):
    """`_allowed_span`'s diagonal rule for the dK/dV kernel's masked rows, on broadcastable operands (there
    [1, M] x [N, 1]), absolute positions: ``LO <= k <= P + kf * (H - P)`` as one unsigned range compare. Row:
    P its position, LO its KV_LO, H its KV_HI (a padding row's or one past Lq's result is not read: its q, dO
    load as 0 and its lse as +inf, so p = 0 there). Key: k its position (BIG for padding and past Lk: past
    every bound), kf 1 if the tile's look-ahead rows look at its modality, else 0: exact for a uniform policy
    (see `MMAMask`, which sends any other to `_allowed`)."""
    return (k - LO).to(tl.uint32, bitcast=True) <= (P - LO + kf * (H - P)).to(tl.uint32, bitcast=True)  # rule: key-span


@triton.jit
def _span_query_bounds(meta_b, smf, q_pos, row_ok, q_doc, Lk):
    """Position, KV_LO and KV_HI of the rows as `_allowed_span` takes them: padding rows and rows past Lq
    (DOC < 0) get position = KV_LO = Lk (KV_LO is Lk there already; their QBITS are 0, so the diagonal rule
    never reads their KV_HI) and KV_HI = -1, below every key of a look-ahead tile."""
    q_lo = tl.load(meta_b + 4 * smf + q_pos, mask=row_ok, other=Lk)
    q_hi = tl.load(meta_b + 5 * smf + q_pos, mask=row_ok, other=-1)
    real = q_doc >= 0
    return tl.where(real, q_pos, Lk), q_lo, tl.where(real, q_hi, -1)


BIG = tl.constexpr(1 << 30)  # a key position (relative or absolute) past every row's KV_HI


@triton.jit
def _span_key_fields(meta_b, smf, start, offs_n, Lk, AFTER: tl.constexpr, look=0):
    """From KMOD alone (PAD_MOD = 31 for padding), relative to `start`: k_eff, k_bit and whether the key is a
    real one (not padding, before Lk: the V mask). Diagonal tiles: k_eff `offs_n` (-1 - start, below every
    KV_LO, for padding) and k_bit 1 if `look` holds KMOD, else 0 (padding: bit 31 is in no policy); they read
    key Lk - 1's KMOD for
    keys past Lk (cheaper than a masked load where the loop pipeline stages it through shared memory): the
    rule excludes them by position (past every KV_HI and q). Look-ahead tiles (AFTER): k_eff `offs_n` if
    `look` (the modalities the block's rows look ahead at, `_look_bits`) holds KMOD, else BIG (padding too:
    bit 31 is in no policy), k_bit unused; their load needs no bound: every visited tile lies inside the field
    stride, whose tail past Lk holds padding's KMOD (`triton_ops._kernel_fields`)."""
    k_pos = start + offs_n
    if AFTER:  # the look-ahead loop is not pipelined: one unmasked load per key pair, the look-ahead bit folded in
        k_mod = tl.load(meta_b + 2 * smf + k_pos)
        k_eff = tl.where(((look >> k_mod) & 1) != 0, offs_n, offs_n + BIG)
        return k_eff, k_eff, k_mod != 31
    else:
        k_mod = tl.load(meta_b + 2 * smf + tl.minimum(k_pos, Lk - 1))
        return tl.where(k_mod != 31, offs_n, -1 - start), (look >> k_mod) & 1, (k_mod != 31) & (k_pos < Lk)


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
def _tile_key_fields(meta_b, smf, start, offs_n, Lk, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     BEFORE: tl.constexpr, AFTER: tl.constexpr, NOPAD: tl.constexpr, look=0,
                     LOOK: tl.constexpr = True):
    """The key fields a masked query-side tile's rule reads (`_tile_allowed`; fields it does not read hold a
    placeholder), and which keys are real (not padding, before Lk). `look`: `_look_bits` of the block (read by
    the look-ahead tiles of plain MMA, and by the diagonal NOPAD tiles with LOOK: k_bit = 1 if `look` holds
    the key's modality, else 0)."""
    k_pos = start + offs_n
    k_doc, k_seg, k_mod, k_grp, k_eff, k_bit = k_pos, k_pos, k_pos, k_pos, k_pos, k_pos  # placeholders
    if BEFORE:  # inside [0, Lk): no key bound
        k_doc = tl.load(meta_b + k_pos)
        k_real = k_doc >= 0
    elif NOPAD:  # inside [0, Lk), no padding (`_diagonal_kind`): positions alone, no load mask
        k_real = k_pos < Lk  # unused
        k_eff = offs_n
        if LOOK:
            k_bit = (look >> tl.load(meta_b + 2 * smf + k_pos)) & 1
    elif not (HAS_GROUPS or HAS_WINDOW):
        k_eff, k_bit, k_real = _span_key_fields(meta_b, smf, start, offs_n, Lk, AFTER, look)
    else:
        # bounded by the field stride: past Lk the fields hold padding's (`triton_ops._kernel_fields`)
        k_doc, k_seg, k_mod, k_grp = _load_key_fields(meta_b, smf, k_pos, k_pos < smf, HAS_GROUPS)
        k_real = k_doc >= 0  # -1 past Lk too
    return k_pos, k_doc, k_seg, k_mod, k_grp, k_eff, k_bit, k_real


@triton.jit
def _tile_allowed(q_pos, q_doc, q_seg, q_bits, q_grp, q_gbits, q_lo, q_hi, start, offs_n, k_pos, k_doc, k_seg,
                  k_mod, k_grp, k_eff, k_bit, window, HAS_GROUPS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                  BEFORE: tl.constexpr, AFTER: tl.constexpr, LOOK: tl.constexpr, NOPAD: tl.constexpr,
                  INSIDE: tl.constexpr = False):
    """[BLOCK_M, BLOCK_N] allowed pairs of a masked query-side tile (forward, dQ), by the cheapest exact rule
    for the loop it is in (`_diagonal_kind`): BEFORE document equality; NOPAD (keys by position alone) plain
    causal with INSIDE, the causal form of `_allowed_span` without, `_allowed_look` with LOOK (and INSIDE);
    else plain MMA `_allowed_span`, groups or a window `_allowed`."""
    if BEFORE:
        return _allowed_before(k_doc[None, :], q_doc[:, None])
    elif NOPAD and LOOK:
        return _allowed_look((tl.where(q_doc >= 0, q_pos, -1) - start)[:, None], (q_hi - start)[:, None],
                             offs_n[None, :], k_bit[None, :])
    elif NOPAD and INSIDE:
        return _allowed_causal(tl.where(q_doc >= 0, q_pos - start, -1 - start)[:, None], offs_n[None, :])
    elif NOPAD:
        return _allowed_span((q_pos - start)[:, None], (q_lo - start)[:, None], (q_hi - start)[:, None],
                             q_bits[:, None], offs_n[None, :], offs_n[None, :], k_bit[None, :], False, False)
    elif not (HAS_GROUPS or HAS_WINDOW):  # padding rows: KV_HI = q in the diagonal form (their KV_HI is -1)
        return _allowed_span((q_pos - start)[:, None], (q_lo - start)[:, None],
                             ((q_hi if AFTER else tl.where(q_doc >= 0, q_hi, q_pos)) - start)[:, None],
                             q_bits[:, None], offs_n[None, :], k_eff[None, :], k_bit[None, :], AFTER, LOOK)
    else:
        return _allowed(q_pos[:, None], q_doc[:, None], q_seg[:, None], q_bits[:, None], q_grp[:, None],
                        q_gbits[:, None], k_pos[None, :], k_doc[None, :], k_seg[None, :], k_mod[None, :],
                        k_grp[None, :], window, HAS_GROUPS, HAS_WINDOW)
