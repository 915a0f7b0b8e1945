"""The forward's and dQ's loops visit exactly the tiles holding an allowed pair (issue 11): the causal part,
then the look-ahead part past the gap (`_lookahead_split`), hopping over runs of modalities no row of the
block looks ahead at (`_next_look_block`). Run through the kernels' own helpers in the interpreter, checked
against the dense mask, and against the tiles suite's torch replica (`benchmarks.tiles`)."""
import random

import pytest
import torch
import triton
import triton.language as tl

from benchmarks import tiles
from benchmarks.layouts import LAYOUTS as BENCH_LAYOUTS
from benchmarks.layouts import make_layout as bench_layout
from helpers import random_layout
from mma_kernels import MMAMask
from mma_kernels.mask import NUM_FIELDS
from mma_kernels.ops import triton_ops
from mma_kernels.ops.triton_kernels import (_diagonal_kind, _key_block_ranges, _load_query_fields, _look_bits,
                                            _lookahead_split, _next_look_block, _span_query_bounds, _tile_allowed,
                                            _tile_key_fields)


@triton.jit
def _store_rule(RULE, meta_b, smf, b, rows, q_doc, q_pos, q_lo, q_hi, q_bits, n, Lq, Lk, NKB, BLOCK_N: tl.constexpr,
                BEFORE: tl.constexpr, AFTER: tl.constexpr, LOOK: tl.constexpr = True, NOPAD: tl.constexpr = False,
                INSIDE: tl.constexpr = False, look=0):
    """RULE[b, rows, keys of block n] = the masked loop's own rule, as the kernels call it (`_tile_key_fields`,
    `_tile_allowed`, plain MMA: no groups, no window)."""
    start = n * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    k_pos, k_doc, k_seg, k_mod, k_grp, k_eff, k_bit, k_real = _tile_key_fields(
        meta_b, smf, start, offs_n, Lk, False, False, BEFORE, AFTER, NOPAD, look, LOOK)
    ok = _tile_allowed(q_pos, q_doc, q_bits, q_bits, q_bits, q_bits, q_lo, q_hi, start, offs_n, k_pos, k_doc, k_seg,
                       k_mod, k_grp, k_eff, k_bit, 0, False, False, BEFORE, AFTER, LOOK, NOPAD, INSIDE)
    tl.store(RULE + (b * Lq + rows[:, None]) * (NKB * BLOCK_N) + start + offs_n[None, :], ok.to(tl.int8),
             mask=(rows < Lq)[:, None])


@triton.jit
def _visits_kernel(META, PADCUM, OUT, RULE, smb, smf, spb, Lq, Lk, NKB, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HAS_GROUPS: tl.constexpr):
    """OUT[b, m, n] = 1 for a masked visit of key block n by row block m, 2 for a plain one (added up);
    RULE [B, Lq, NKB * BLOCK_N] holds the masked loops' own rule on their tiles (else 2): `_allowed_before` in
    the first, `_allowed_span` (plain MMA only) in the diagonal and look-ahead loops."""
    m = tl.program_id(0)
    b = tl.program_id(1)
    meta_b = META + b * smb
    rows = m * BLOCK_M + tl.arange(0, BLOCK_M)
    q_doc, q_seg, q_bits, q_grp, q_gbits = _load_query_fields(meta_b, smf, rows + Lk - Lq, rows < Lq, HAS_GROUPS)
    n_lo, f_lo, f_hi, n_hi = _key_block_ranges(meta_b, smf, PADCUM + b * spb, m * BLOCK_M, Lq, Lk, BLOCK_M, BLOCK_N)
    f_lo, f_hi, c_hi, a_lo = _lookahead_split(meta_b, smf, m * BLOCK_M, Lq, Lk, n_lo, f_lo, f_hi, n_hi,
                                              BLOCK_M, BLOCK_N)
    out = OUT + (b * tl.num_programs(0) + m) * NKB
    q_pos, q_lo, q_hi = _span_query_bounds(meta_b, smf, rows + Lk - Lq, rows < Lq, q_doc, Lk)
    for n in range(n_lo, f_lo):
        tl.store(out + n, tl.load(out + n) + 1)
        _store_rule(RULE, meta_b, smf, b, rows, q_doc, q_pos, q_lo, q_hi, q_bits, n, Lq, Lk, NKB, BLOCK_N, True, False)
    for n in range(f_lo, f_hi):
        tl.store(out + n, tl.load(out + n) + 2)
    bits = _look_bits(q_bits, q_gbits, HAS_GROUPS)
    diag = _diagonal_kind(PADCUM + b * spb, q_doc, q_lo, bits, f_hi, c_hi, Lk, BLOCK_N, HAS_GROUPS, False)
    for n in range(f_hi, c_hi):
        tl.store(out + n, tl.load(out + n) + 1)
        if not HAS_GROUPS:  # as the kernels (`_fwd_row_block`): by `_diagonal_kind`
            if diag == 3:
                _store_rule(RULE, meta_b, smf, b, rows, q_doc, q_pos, q_lo, q_hi, q_bits, n, Lq, Lk, NKB, BLOCK_N,
                            False, False, LOOK=False, NOPAD=True, INSIDE=True)
            elif diag == 2:
                _store_rule(RULE, meta_b, smf, b, rows, q_doc, q_pos, q_lo, q_hi, q_bits, n, Lq, Lk, NKB, BLOCK_N,
                            False, False, LOOK=False, NOPAD=True)
            elif diag == 1:
                _store_rule(RULE, meta_b, smf, b, rows, q_doc, q_pos, q_lo, q_hi, q_bits, n, Lq, Lk, NKB, BLOCK_N,
                            False, False, NOPAD=True, INSIDE=True, look=bits)
            else:
                _store_rule(RULE, meta_b, smf, b, rows, q_doc, q_pos, q_lo, q_hi, q_bits, n, Lq, Lk, NKB, BLOCK_N,
                            False, False, look=bits)
    n = _next_look_block(meta_b, smf, a_lo, n_hi, bits, BLOCK_N)
    while n < n_hi:
        tl.store(out + n, tl.load(out + n) + 1)
        if not HAS_GROUPS:
            _store_rule(RULE, meta_b, smf, b, rows, q_doc, q_pos, q_lo, q_hi, q_bits, n, Lq, Lk, NKB, BLOCK_N, False, True,
                        look=bits)
        n = _next_look_block(meta_b, smf, n + 1, n_hi, bits, BLOCK_N)


def visits(mask, Lq, BM, BN):
    B, Lk = mask.batch_size, mask.seq_len
    nqb, nkb = triton.cdiv(Lq, BM), triton.cdiv(Lk, BN)
    out = torch.zeros(B, nqb, nkb, dtype=torch.int32)
    rule = torch.full((B, Lq, nkb * BN), 2, dtype=torch.int8)
    meta = triton_ops._kernel_fields(mask)  # as the kernels read the fields (the look-ahead load has no bound)
    _visits_kernel[(nqb, B)](meta, mask.padcum, out, rule, meta.stride(0), meta.stride(1),
                             mask.padcum.stride(0), Lq, Lk, nkb, BLOCK_M=BM, BLOCK_N=BN,
                             HAS_GROUPS=meta.shape[1] > NUM_FIELDS)
    return out, rule[:, :, :Lk]


def check(mask, Lq, BM, BN):
    """Each tile visited at most once; every tile with work visited; plain tiles fully allowed; the cheap
    rules of the masked loops exact; the replica's counts equal the kernel helpers'. Returns
    (visited, tiles with work)."""
    out, rule = visits(mask, Lq, BM, BN)
    assert int(out.max()) <= 2, "a tile visited twice"
    work = tiles.tiles_with_work(mask, Lq, BM, BN) if not mask.has_groups else None
    dense = mask.to_dense(Lq)
    B, _, Lk = dense.shape
    nqb, nkb = out.shape[1:]
    pad = torch.zeros(B, nqb * BM, nkb * BN, dtype=torch.bool)
    pad[:, :Lq, :Lk] = dense
    tiles_dense = pad.view(B, nqb, BM, nkb, BN)
    has_work = tiles_dense.any(4).any(2)
    if work is not None:
        assert torch.equal(work, has_work)
    assert not (has_work & (out == 0)).any(), "a tile holding allowed pairs is skipped"
    # the masked loops' cheaper rules (`_allowed_before`, `_allowed_span`) equal the contract's rule there
    seen = rule != 2
    assert torch.equal(rule[seen].bool(), dense[seen]), "a masked loop's rule differs from the contract's"
    row_valid = torch.zeros(B, nqb * BM, dtype=torch.bool)
    row_valid[:, :Lq] = mask.meta[:, 0, Lk - Lq:] >= 0
    for b, m, n in (out == 2).nonzero().tolist():
        t = tiles_dense[b, m, :, n]
        assert t[row_valid[b, m * BM:(m + 1) * BM]].all(), f"plain tile ({m}, {n}) not fully allowed"
    split = tiles.lookahead_split(mask, Lq, BM, BN, tiles.query_side_ranges(mask, Lq, BM, BN))
    masked, plain = tiles.loop_tiles(*split[:4], tiles.look_tiles(mask, Lq, BM, BN, split))
    assert (masked, plain) == (int((out == 1).sum()), int((out == 2).sum()))
    return int((out > 0).sum()), int(has_work.sum())


@pytest.mark.parametrize("name", BENCH_LAYOUTS)
def test_benchmark_layouts_visit_the_minimum(name):
    lay = bench_layout(name, 1, 800, seed=4)
    mask = MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)
    for BM, BN in ((64, 32), (32, 64)):
        visited, work = check(mask, 800, BM, BN)
        assert visited == work, f"{name} {BM}x{BN}: {visited} tiles visited, {work} hold allowed pairs"


def test_random_layouts_sound_and_exact():
    rng = random.Random(17)
    for i in range(20):
        L = rng.randint(1, 100)
        mod, seg, doc = random_layout(rng, 2, L, max_mod=3)
        if rng.random() < 0.3:  # padding inside documents too
            mod[rng.randrange(2), rng.randrange(L)] = -1
        policy = rng.choice(["mma", "causal", "bidirectional_image", "prefix", [(0, 2), (2, 1)], [(1, 0), (1, 2)]])
        kw = {}
        if i % 3 == 0:  # a second mutual level: one group per segment
            kw = dict(group_ids=seg, group_policy=rng.choice(["bidirectional_image", [(2, 0)]]))
        mask = MMAMask(mod, seg, doc, policy=policy, **kw)
        check(mask, rng.randint(1, L), rng.choice([16, 32]), rng.choice([16, 32]))


@triton.jit
def _span_all_kernel(META, RULE, smb, smf, Lq, Lk, NKB, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     LOOK: tl.constexpr):
    """RULE[b, rows, keys] = `_allowed_span` (the diagonal form, exact on any tile under a uniform policy) on every
    tile; LOOK=False: its causal form, on the row blocks with no look-ahead bit. (`_allowed_causal` holds only on the tiles
    `_diagonal_kind` gives it: checked in `check`.)"""
    m = tl.program_id(0)
    n = tl.program_id(1)
    b = tl.program_id(2)
    meta_b = META + b * smb
    rows = m * BLOCK_M + tl.arange(0, BLOCK_M)
    q_doc, q_seg, q_bits, q_grp, q_gbits = _load_query_fields(meta_b, smf, rows + Lk - Lq, rows < Lq, False)
    q_pos, q_lo, q_hi = _span_query_bounds(meta_b, smf, rows + Lk - Lq, rows < Lq, q_doc, Lk)
    if LOOK:
        _store_rule(RULE, meta_b, smf, b, rows, q_doc, q_pos, q_lo, q_hi, q_bits, n, Lq, Lk, NKB, BLOCK_N, False, False,
                    look=_look_bits(q_bits, q_gbits, False))
    else:  # the causal form, on the row blocks that look ahead at nothing (others store 2: not checked)
        if _look_bits(q_bits, q_gbits, False) == 0:
            _store_rule(RULE, meta_b, smf, b, rows, q_doc, q_pos, q_lo, q_hi, q_bits, n, Lq, Lk, NKB, BLOCK_N,
                        False, False, False)


def _edge_layouts():
    """Layouts aimed at what `_allowed_span` relies on (KV_HI, contiguous runs, padding anywhere)."""
    P, T, I, A = -1, 0, 1, 2
    yield "pad inside segment and document", [T, I, I, P, I, T, P, T, T, T, P, T], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1], None, "mma"
    yield "several image runs in a segment", [I, I, T, I, T, T, I, T, T, T], [0] * 8 + [1, 1], None, "mma"
    yield "left and right padding", [P, P, T, I, I, T, T, P, P], [0, 0, 0, 0, 0, 0, 0, 0, 0], None, "mma"
    yield "documents, padding at a boundary", [T, I, T, P, I, I, T, T, P, I, T], [0, 0, 0, 1, 2, 2, 2, 2, 3, 4, 4], [0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2], "mma"
    yield "three modalities, custom pairs", [A, I, T, A, T, I, I, A, T, T, A], [0] * 7 + [1] * 4, None, [(2, 0), (1, 2), (2, 1)]
    yield "high modality ids", [30, 0, 29, 30, 0, -1, 29, 0], [0] * 8, None, [(30, 0), (29, 30)]
    yield "prefix", [T, I, P, T, T, I, T], [0, 0, 0, 0, 1, 1, 1], None, "prefix"
    yield "all padding", [P, P, P, P], [0, 0, 0, 0], None, "mma"


@pytest.mark.parametrize("name,mod,seg,doc,policy", list(_edge_layouts()), ids=[e[0] for e in _edge_layouts()])
def test_span_rule_exact_on_every_tile(name, mod, seg, doc, policy):
    """`_allowed_span` equals the contract's rule on every pair (not just the tiles a loop visits), for each Lq."""
    t = lambda x: torch.tensor([x], dtype=torch.int32)  # noqa: E731
    mask = MMAMask(t(mod), t(seg), None if doc is None else t(doc), policy=policy)
    Lk = mask.seq_len
    for Lq in sorted({1, Lk // 2 + 1, Lk}):
        BM, BN = 4, 4
        nqb, nkb = triton.cdiv(Lq, BM), triton.cdiv(Lk, BN)
        dense = mask.to_dense(Lq)
        # the span form takes the look-ahead bit per block: exact for a uniform policy; the kernels send any
        # other to the general rule (an inert group level, `MMAMask`), so only its causal form applies there
        uniform = mask.meta.shape[1] == NUM_FIELDS
        for look in (True, False) if uniform else (False,):
            rule = torch.full((1, Lq, nkb * BN), 2, dtype=torch.int8)
            _span_all_kernel[(nqb, nkb, 1)](mask.meta, rule, mask.meta.stride(0), mask.meta.stride(1), Lq, Lk, nkb,
                                            BLOCK_M=BM, BLOCK_N=BN, LOOK=look)
            rule = rule[:, :, :Lk]
            seen = rule != 2
            assert torch.equal(rule[seen].bool(), dense[seen]), f"{name}, Lq={Lq}, LOOK={look}"
            assert seen.all() if look else (seen.any() or bool(mask.meta[0, 3].any())), "pairs left unchecked"
        check(mask, Lq, BM, BN)
