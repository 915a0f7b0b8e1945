"""The tiles suite (`python -m benchmarks --suite tiles`): its torch replica of the kernels' range logic
equals what the kernels' own helpers compute (run in the interpreter), and its minimum equals the count
of tiles holding an allowed pair in the dense mask."""
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
from mma_kernels.ops.triton_kernels import (_diagonal_kind, _key_block_ranges, _load_query_fields, _look_bits,
                                            _lookahead_split, _query_block_ranges)


@triton.jit
def _ranges(META, PADCUM, OUT_Q, OUT_K, smb, smf, spb, Lq, Lk, NQB, NKB, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    i = tl.program_id(0)
    b = tl.program_id(1)
    meta_b = META + b * smb
    pad_b = PADCUM + b * spb
    if i < NQB:
        a0, a1, a2, a3 = _key_block_ranges(meta_b, smf, pad_b, i * BLOCK_M, Lq, Lk, BLOCK_M, BLOCK_N)
        o = OUT_Q + (b * NQB + i) * 4
        tl.store(o, a0)
        tl.store(o + 1, a1)
        tl.store(o + 2, a2)
        tl.store(o + 3, a3)
    if i < NKB:
        c0, c1, c2, c3 = _query_block_ranges(meta_b, smf, pad_b, i * BLOCK_N, Lq, Lk, BLOCK_M, BLOCK_N)
        o = OUT_K + (b * NKB + i) * 4
        tl.store(o, c0)
        tl.store(o + 1, c1)
        tl.store(o + 2, c2)
        tl.store(o + 3, c3)


def kernel_ranges(mask, Lq, BM, BN):
    B, Lk = mask.batch_size, mask.seq_len
    nqb, nkb = triton.cdiv(Lq, BM), triton.cdiv(Lk, BN)
    out_q = torch.full((B, nqb, 4), -99, dtype=torch.int32)
    out_k = torch.full((B, nkb, 4), -99, dtype=torch.int32)
    _ranges[(max(nqb, nkb), B)](mask.meta, mask.padcum, out_q, out_k, mask.meta.stride(0), mask.meta.stride(1),
                                mask.padcum.stride(0), Lq, Lk, nqb, nkb, BLOCK_M=BM, BLOCK_N=BN)
    return out_q.long(), out_k.long()


def dense_work(mask, Lq, BM, BN):
    d = mask.to_dense(Lq)
    B, Lq, Lk = d.shape
    nq, nk = triton.cdiv(Lq, BM), triton.cdiv(Lk, BN)
    pad = torch.zeros(B, nq * BM, nk * BN, dtype=torch.bool)
    pad[:, :Lq, :Lk] = d
    return pad.view(B, nq, BM, nk, BN).any(4).any(2)


def check(mod, seg, doc, policy, Lq, BM, BN):
    mask = MMAMask(mod, seg, doc, policy=policy)
    rq, rk = kernel_ranges(mask, Lq, BM, BN)
    assert torch.equal(torch.stack(tiles.query_side_ranges(mask, Lq, BM, BN), -1), rq)
    assert torch.equal(torch.stack(tiles.key_side_ranges(mask, Lq, BM, BN), -1), rk)
    work = tiles.tiles_with_work(mask, Lq, BM, BN)
    assert torch.equal(work, dense_work(mask, Lq, BM, BN))
    # what the counts mean: visited tiles include every tile with work, on both sides
    masked, plain = tiles.loop_tiles(*tiles.query_side_ranges(mask, Lq, BM, BN))
    assert masked + plain >= int(work.sum())
    masked, plain = tiles.loop_tiles(*tiles.key_side_ranges(mask, Lq, BM, BN))
    assert masked + plain >= int(work.sum())


def test_replica_matches_kernel_helpers_on_random_layouts():
    rng = random.Random(5)
    for _ in range(25):
        L = rng.randint(1, 100)
        mod, seg, doc = random_layout(rng, 2, L, max_mod=2)
        if rng.random() < 0.3:  # padding inside documents too
            mod[rng.randrange(2), rng.randrange(L)] = -1
        policy = rng.choice(["mma", "causal", "bidirectional_image", "prefix", [(0, 2), (2, 2)]])
        check(mod, seg, doc, policy, rng.randint(1, L), rng.choice([16, 32]), rng.choice([16, 32]))


@pytest.mark.parametrize("name", BENCH_LAYOUTS)
def test_replica_matches_kernel_helpers_on_benchmark_layouts(name):
    lay = bench_layout(name, 2, 700, seed=3)
    check(lay.modality_ids, lay.segment_ids, lay.document_ids, "mma", 700, 64, 32)


def test_minimum_equals_flex_block_mask():
    pytest.importorskip("torch.nn.attention.flex_attention")
    lay = bench_layout("aki", 2, 512, seed=1)
    mask = MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)
    blocks, _, _ = tiles.flex_blocks(lay, 64, 32)
    assert int(tiles.tiles_with_work(mask, 512, 64, 32).sum()) == blocks


def test_loop_counts_split_the_masked_tiles_per_loop_and_feed_the_cost_model():
    """Each record's masked tiles are split per masked loop, named by the rule form it evaluates (fwd/dQ:
    `tiles.QUERY_LOOPS`; dK/dV: `tiles.KEY_LOOPS`); the cost model weighs each loop by its count, matching the
    static report's loops by name whatever their order."""
    from benchmarks.static.cost import cost_row

    lay = bench_layout("aki", 1, 2048, seed=2)
    recs, _ = tiles.count_case(lay, 2048)
    assert {r["kernel"] for r in recs} == {"fwd", "dq", "dkdv"}
    assert any(r["masked_block_n"] < r["block_n"] for r in recs)  # the 128x128 tiles' narrower masked loops
    assert any(r["masked_block_m"] < r["block_m"] for r in recs)  # dK/dV's 64x128 tile's shorter ones
    for r in recs:
        names = tiles.KEY_LOOPS if r["kernel"] == "dkdv" else tiles.QUERY_LOOPS
        assert r["loop_rules"] == list(names) and len(r["masked_loops"]) == len(names)
        assert r["visited"] == r["masked"] + r["plain"]
        assert r["masked_loops"][0] > 0 and r["masked_loops"][-1] > 0 and r["plain"] > 0
        if r["masked_block_m"] < r["block_m"]:
            # counted in tiles of masked_block_m rows: the same rows, the last loop cut at Lq
            R = r["block_m"] // r["masked_block_m"]
            mask = MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)
            whole, plain = tiles.loop_counts(*tiles.key_side_ranges(mask, 2048, r["block_m"], r["block_n"]))
            assert plain == r["plain"] and sum(whole) == r["masked"]
            assert r["masked_loops"][0] == R * whole[0] and whole[1] * (R - 1) < r["masked_loops"][1] <= R * whole[1]
            continue
        if r["masked_block_n"] == r["block_n"]:
            assert sum(r["masked_loops"]) == r["masked"]
            continue
        # counted in tiles of masked_block_n keys: the same keys (cut at Lk) as the whole tiles, but the look-ahead
        # loop hops at the narrower width and may skip a part
        R, BM, BN = r["block_n"] // r["masked_block_n"], r["block_m"], r["block_n"]
        mask = MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)
        split = tiles.lookahead_split(mask, 2048, BM, BN, tiles.query_side_ranges(mask, 2048, BM, BN))
        whole, plain = tiles.query_loop_counts(mask, 2048, BM, BN, split)
        assert plain == r["plain"] and sum(whole) == r["masked"]
        assert r["masked_loops"][0] == R * whole[0]  # the tiles before the diagonal lie inside [0, Lk)
        assert all(n <= R * w for n, w in zip(r["masked_loops"], whole)), (r["masked_loops"], whole)
        assert sum(r["masked_loops"]) > r["masked"]
    fwd = next(r for r in recs if r["kernel"] == "fwd")
    counts = dict(zip(fwd["loop_rules"], fwd["masked_loops"]))
    assert counts["causal"] > 0 and counts["look"] > 0  # text rows' and image rows' diagonals both run
    cost = dict(zip(tiles.QUERY_LOOPS, (500, 400, 450, 700, 600, 900)))
    order = ("look-ahead", "span", "before", "causal", "look", "span-causal")  # as ptxas may lay them out
    static = dict(num_warps=8, num_stages=3, loops=[dict(kind="masked", rule=n, instructions=cost[n]) for n in order]
                  + [dict(kind="plain", rule="", instructions=100)])
    row = cost_row(fwd, static)
    want = 100 * fwd["plain"] + sum(cost[n] * c for n, c in counts.items())
    assert row["instructions"] == want
    assert row["over_all_plain"] == round(want / (100 * fwd["visited"]), 3)
    static["loops"] = static["loops"][1:]  # a loop structure that does not line up is not joined
    assert cost_row(fwd, static) is None


@triton.jit
def _diag(META, PADCUM, OUT, smb, smf, spb, Lq, Lk, NQB, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    i = tl.program_id(0)
    b = tl.program_id(1)
    meta_b = META + b * smb
    pad_b = PADCUM + b * spb
    rows = i * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = rows < Lq
    q_doc, q_seg, q_bits, q_grp, q_gbits = _load_query_fields(meta_b, smf, rows + Lk - Lq, ok, False)
    q_lo = tl.load(meta_b + 4 * smf + rows + Lk - Lq, mask=ok, other=Lk)
    n_lo, f_lo, f_hi, n_hi = _key_block_ranges(meta_b, smf, pad_b, i * BLOCK_M, Lq, Lk, BLOCK_M, BLOCK_N)
    f_lo, f_hi, c_hi, a_lo = _lookahead_split(meta_b, smf, i * BLOCK_M, Lq, Lk, n_lo, f_lo, f_hi, n_hi, BLOCK_M, BLOCK_N)
    look = _look_bits(q_bits, q_gbits, False)
    tl.store(OUT + b * NQB + i, _diagonal_kind(pad_b, q_doc, q_lo, look, f_hi, c_hi, Lk, BLOCK_N, False, False))


@pytest.mark.parametrize("seed", range(4))
def test_diagonal_kinds_replica_matches_the_kernels(seed):
    """`diagonal_kinds` (which rule each row block's diagonal tiles run with) equals the kernels'
    `_diagonal_kind`, on random layouts with padding, documents and short queries."""
    rng = random.Random(seed)
    B, L = 2, rng.choice([97, 130, 257])
    Lq = rng.choice([L, L // 2 + 1])
    mod, seg, doc = random_layout(rng, B, L)
    mask = MMAMask(mod, seg, doc)
    BM, BN = rng.choice([(32, 32), (64, 32), (32, 64)])
    nqb = triton.cdiv(Lq, BM)
    out = torch.full((B, nqb), -9, dtype=torch.int32)
    _diag[(nqb, B)](mask.meta, mask.padcum, out, mask.meta.stride(0), mask.meta.stride(1), mask.padcum.stride(0),
                    Lq, L, nqb, BLOCK_M=BM, BLOCK_N=BN)
    split = tiles.lookahead_split(mask, Lq, BM, BN, tiles.query_side_ranges(mask, Lq, BM, BN))
    want = tiles.diagonal_kinds(mask, Lq, BM, BN, split)
    assert torch.equal(out.long(), want), (out, want)


def test_long_document_layouts():
    """`--layouts video,causal` (`benchmarks.sp_balance`'s single long documents) run in the tile suite: mostly
    plain tiles, where the 128-wide key tile halves the visits (the cost model's case for it)."""
    lay = tiles._layout("video", 1, 4096)
    assert lay.name == "video" and int(lay.document_ids.max()) == 0 and bool((lay.modality_ids == 1).any())
    recs, _ = tiles.count_case(lay, 4096)
    fwd = {(r["block_m"], r["block_n"]): r for r in recs if r["kernel"] == "fwd"}
    wide, narrow = fwd[128, 128], fwd[128, 64]
    assert wide["plain"] > 0.8 * wide["visited"] and wide["masked_block_n"] == 64
    assert 2 * wide["visited"] <= narrow["visited"] + 2 * (4096 // 128)  # coarser tiles: half, up to the diagonal
