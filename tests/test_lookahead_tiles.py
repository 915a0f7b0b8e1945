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
from mma_kernels.ops.triton_kernels import (_allowed_before, _key_block_ranges, _load_query_fields, _look_bits,
                                            _lookahead_split, _next_look_block)


@triton.jit
def _visits_kernel(META, PADCUM, OUT, RULE, smb, smf, spb, Lq, Lk, NKB, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HAS_GROUPS: tl.constexpr):
    """OUT[b, m, n] = 1 for a masked visit of key block n by row block m, 2 for a plain one (added up);
    RULE [B, Lq, NKB * BLOCK_N] holds `_allowed_before` on the tiles of the first masked loop (else 2)."""
    m = tl.program_id(0)
    b = tl.program_id(1)
    meta_b = META + b * smb
    rows = m * BLOCK_M + tl.arange(0, BLOCK_M)
    q_doc, q_seg, q_bits, q_grp, q_gbits = _load_query_fields(meta_b, smf, rows + Lk - Lq, rows < Lq, HAS_GROUPS)
    n_lo, f_lo, f_hi, n_hi = _key_block_ranges(meta_b, smf, PADCUM + b * spb, m * BLOCK_M, Lq, Lk, BLOCK_M, BLOCK_N)
    f_lo, f_hi, c_hi, a_lo = _lookahead_split(meta_b, smf, m * BLOCK_M, Lq, Lk, n_lo, f_lo, f_hi, n_hi,
                                              BLOCK_M, BLOCK_N)
    out = OUT + (b * tl.num_programs(0) + m) * NKB
    q_lo = tl.load(meta_b + 4 * smf + rows + Lk - Lq, mask=rows < Lq, other=Lk)
    for n in range(n_lo, f_lo):
        tl.store(out + n, tl.load(out + n) + 1)
        k_pos = n * BLOCK_N + tl.arange(0, BLOCK_N)
        k_doc = tl.load(meta_b + k_pos, mask=k_pos < Lk, other=-1)
        ok = _allowed_before(k_pos, k_doc, q_lo)
        tl.store(RULE + (b * Lq + rows[:, None]) * (NKB * BLOCK_N) + k_pos[None, :], ok.to(tl.int8),
                 mask=(rows < Lq)[:, None])
    for n in range(f_lo, f_hi):
        tl.store(out + n, tl.load(out + n) + 2)
    for n in range(f_hi, c_hi):
        tl.store(out + n, tl.load(out + n) + 1)
    bits = _look_bits(q_bits, q_gbits, HAS_GROUPS)
    n = _next_look_block(meta_b, smf, a_lo, n_hi, bits, BLOCK_N)
    while n < n_hi:
        tl.store(out + n, tl.load(out + n) + 1)
        n = _next_look_block(meta_b, smf, n + 1, n_hi, bits, BLOCK_N)


def visits(mask, Lq, BM, BN):
    B, Lk = mask.batch_size, mask.seq_len
    nqb, nkb = triton.cdiv(Lq, BM), triton.cdiv(Lk, BN)
    out = torch.zeros(B, nqb, nkb, dtype=torch.int32)
    rule = torch.full((B, Lq, nkb * BN), 2, dtype=torch.int8)
    _visits_kernel[(nqb, B)](mask.meta, mask.padcum, out, rule, mask.meta.stride(0), mask.meta.stride(1),
                             mask.padcum.stride(0), Lq, Lk, nkb, BLOCK_M=BM, BLOCK_N=BN, HAS_GROUPS=mask.has_groups)
    return out, rule[:, :, :Lk]


def check(mask, Lq, BM, BN):
    """Each tile visited at most once; every tile with work visited; plain tiles fully allowed; the cheap
    rule of the first masked loop exact; the replica's counts equal the kernel helpers'. Returns
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
    # the first masked loop's cheap rule (keys at or before every row) equals the contract's rule there
    seen = rule != 2
    assert torch.equal(rule[seen].bool(), dense[seen]), "_allowed_before differs from the rule"
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
