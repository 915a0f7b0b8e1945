"""Block skipping is sound and tight: the kernels' own range helpers, checked against the dense mask.

Sound: every tile holding an allowed pair is visited. Exact: every tile run without mask
arithmetic is fully allowed for its valid rows. Tight: tiles visited ~ tiles with work.
"""
import random

import pytest
import torch
import triton
import triton.language as tl

from helpers import LAYOUTS, make_layout, random_layout
from mma_kernels import MMAMask
from mma_kernels.ops.triton_kernels import _key_block_ranges, _query_block_ranges


@triton.jit
def _store4(ptr, a, b, c, d):
    tl.store(ptr + 0, a)
    tl.store(ptr + 1, b)
    tl.store(ptr + 2, c)
    tl.store(ptr + 3, d)


@triton.jit
def _ranges_kernel(META, PADCUM, OUT_Q, OUT_K, smb, smf, spb, Lq, Lk, NQB, NKB,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    i = tl.program_id(0)
    b = tl.program_id(1)
    meta_b = META + b * smb
    pad_b = PADCUM + b * spb
    if i < NQB:
        a0, a1, a2, a3 = _key_block_ranges(meta_b, smf, pad_b, i * BLOCK_M, Lq, Lk, BLOCK_M, BLOCK_N)
        _store4(OUT_Q + (b * NQB + i) * 4, a0, a1, a2, a3)
    if i < NKB:
        c0, c1, c2, c3 = _query_block_ranges(meta_b, smf, pad_b, i * BLOCK_N, Lq, Lk, BLOCK_M, BLOCK_N)
        _store4(OUT_K + (b * NKB + i) * 4, c0, c1, c2, c3)


def ranges(mask, Lq, BM, BN):
    B, Lk = mask.batch_size, mask.seq_len
    nqb, nkb = triton.cdiv(Lq, BM), triton.cdiv(Lk, BN)
    out_q = torch.zeros(B, nqb, 4, dtype=torch.int32)
    out_k = torch.zeros(B, nkb, 4, dtype=torch.int32)
    _ranges_kernel[(max(nqb, nkb), B)](mask.meta, mask.padcum, out_q, out_k, mask.meta.stride(0), mask.meta.stride(1),
                                       mask.padcum.stride(0), Lq, Lk, nqb, nkb, BLOCK_M=BM, BLOCK_N=BN)
    return out_q.tolist(), out_k.tolist()


def check(mod, seg, doc, policy, Lq, BM, BN):
    mask = MMAMask(mod, seg, doc, policy=policy)
    B, Lk = mod.shape
    off = Lk - Lq
    dense = mask.to_dense(Lq)
    row_valid = mod[:, off:] != -1
    rq, rk = ranges(mask, Lq, BM, BN)
    visited = work = k_visited = k_work = 0
    for b in range(B):
        # query side (forward, dQ): rows block m visits key blocks [n_lo, n_hi)
        for m, (n_lo, f_lo, f_hi, n_hi) in enumerate(rq[b]):
            assert n_lo <= f_lo <= f_hi <= n_hi or f_lo == f_hi == n_hi, (m, n_lo, f_lo, f_hi, n_hi)
            rows = slice(m * BM, (m + 1) * BM)
            for n in range((Lk + BN - 1) // BN):
                tile = dense[b, rows, n * BN:(n + 1) * BN]
                inside = n_lo <= n < n_hi
                if tile.any():
                    work += 1
                    assert inside, f"row block {m} skips key block {n} holding allowed pairs"
                visited += inside
                if f_lo <= n < f_hi:
                    assert (n + 1) * BN <= Lk
                    assert tile[row_valid[b, rows]].all(), f"tile ({m}, {n}) is run unmasked but is not fully allowed"
        # key side (dK/dV): key block n visits row blocks [m_lo, m_hi)
        for n, (m_lo, f_lo, f_hi, m_hi) in enumerate(rk[b]):
            assert m_lo <= f_lo <= f_hi <= m_hi or f_lo == f_hi == m_hi, (n, m_lo, f_lo, f_hi, m_hi)
            keys = slice(n * BN, (n + 1) * BN)
            for m in range((Lq + BM - 1) // BM):
                tile = dense[b, m * BM:(m + 1) * BM, keys]
                inside = m_lo <= m < m_hi
                if tile.any():
                    k_work += 1
                    assert inside, f"key block {n} skips row block {m} holding allowed pairs"
                k_visited += inside
                if f_lo <= m < f_hi:
                    assert tile[row_valid[b, m * BM:(m + 1) * BM]].all(), f"tile ({m}, {n}) unmasked in dK/dV but not fully allowed"
                if f_hi <= m < m_hi:  # the masked loop above: rows at or after every key (the document rule)
                    assert m * BM + off >= min((n + 1) * BN, Lk) - 1, f"tile ({m}, {n}) above the diagonal holds a later key"
    return visited, work, k_visited, k_work


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("policy", ["mma", "causal", "bidirectional_image", "prefix"])
@pytest.mark.parametrize("BM, BN", [(16, 16), (32, 16), (16, 32)])
def test_named_layouts(layout, policy, BM, BN):
    mod, seg, doc = make_layout(layout, 2, 150, seed=2)
    for Lq in (150, 61, 1):
        visited, work, k_visited, k_work = check(mod, seg, doc, policy, Lq, BM, BN)
        # intervals are exact except under "mma", where an image query's interval also spans
        # image keys it may not see (image -> image stays causal): a few percent more tiles
        assert visited <= 1.15 * work, f"forward visits {visited} tiles, only {work} hold allowed pairs"
        assert k_visited <= 1.15 * k_work, f"dK/dV visits {k_visited} tiles, only {k_work} hold allowed pairs"
        if policy != "mma":
            assert visited == work and k_visited == k_work


def test_random_layouts_sound():
    rng = random.Random(11)
    for _ in range(40):
        L = rng.randint(1, 90)
        mod, seg, doc = random_layout(rng, 2, L, max_mod=2)
        if rng.random() < 0.2:  # padding inside documents too
            mod[0, rng.randrange(L)] = -1
        policy = rng.choice(["mma", "causal", "bidirectional_image", "prefix", [(0, 2), (2, 2)]])
        check(mod, seg, doc, policy, rng.randint(1, L), rng.choice([16, 32]), rng.choice([16, 32]))


def test_packed_documents_skip_other_documents():
    """Work scales with allowed tiles: 8 packed documents of 4 blocks each visit 8 x (4 * 5 / 2)
    tiles, against 32 * 33 / 2 = 528 for one causal sequence of the same length."""
    L, n = 512, 8
    doc = torch.arange(L).div(L // n, rounding_mode="floor")[None]
    mod = torch.zeros(1, L, dtype=torch.long)
    visited, work, k_visited, k_work = check(mod, doc, doc, "mma", L, 16, 16)
    assert visited == work == n * 10
    assert k_visited == k_work == n * 10
