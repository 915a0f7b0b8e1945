"""The second mutual level (group_ids, group_policy) and the sliding window, on every backend.

The oracle here is the rule of docs/semantics.md ("Groups and sliding windows") written one
(i, j) pair at a time from the raw ids, independent of MMAMask's fields, of `to_dense` and of
the reference; attention against it is computed in float64 and compared with the flash-attn rule.
"""
import random

import pytest
import torch
import triton
import triton.language as tl

from helpers import assert_rule, plain_attention, random_layout
from mma_kernels import MMAMask, MMAttention, mma_attention
from mma_kernels.mask import NUM_FIELDS
from mma_kernels.ops.triton_kernels import _key_block_ranges, _query_block_ranges
from mma_kernels.policy import policy_bits
from mma_kernels.reference import flex_mask_mod, mma_attention_reference

PRESETS = ["mma", "causal", "bidirectional_image", "prefix"]


# ----------------------------------------------------------------------------- the literal rule
def rule(mod, seg, doc, grp, policy, group_policy, window, q_len=None):
    B, L = mod.shape
    q_len = L if q_len is None else q_len
    bits, gbits = policy_bits(policy).tolist(), policy_bits(group_policy).tolist()
    own = torch.arange(L).expand(B, L)
    M = mod.tolist()
    S = (own if seg is None else seg).tolist()
    Dc = (torch.zeros_like(mod) if doc is None else doc).tolist()
    G = (own if grp is None else grp).tolist()
    out = torch.zeros(B, q_len, L, dtype=torch.bool)
    for b in range(B):
        for r in range(q_len):
            i = L - q_len + r
            for j in range(L):
                mi, mj = M[b][i], M[b][j]
                if mi == -1 or mj == -1 or Dc[b][i] != Dc[b][j]:
                    continue
                causal = j <= i and (window is None or i - j < window)
                look = S[b][i] == S[b][j] and (bits[mi] >> mj) & 1
                in_group = G[b][i] == G[b][j] and (gbits[mi] >> mj) & 1
                out[b, r, j] = bool(causal or look or in_group)
    return out


def random_groups(rng, mod, doc):
    """Group ids: runs inside each document (e.g. one image each), padding keeps its neighbour's id."""
    B, L = mod.shape
    grp = torch.zeros_like(mod)
    for b in range(B):
        g, prev_doc = 0, None
        for j in range(L):
            if int(doc[b, j]) != prev_doc or rng.random() < 0.15:
                g += 1
            prev_doc = int(doc[b, j])
            grp[b, j] = g
    return grp


def random_case(rng, B, L):
    mod, seg, doc = random_layout(rng, B, L, max_mod=2)
    grp = random_groups(rng, mod, doc) if rng.random() < 0.8 else None
    policy = rng.choice(PRESETS + [[(0, 2), (2, 1)]])
    group_policy = rng.choice(PRESETS + [[(1, 0), (2, 2)]])
    window = rng.choice([None, 1, 2, 3, 5, 9, 17, L + 3])
    return mod, seg, doc, grp, policy, group_policy, window


# ----------------------------------------------------------------------------- mask: to_dense, num_allowed
def test_gemma3_style_example():
    """Image tokens bidirectional inside their image (group), MMA look-ahead to the turn's text,
    window 3 on the causal part only."""
    mod = torch.tensor([[0, 1, 1, 1, 0, 0, 0, 0]])
    seg = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1]])
    grp = torch.tensor([[0, 1, 1, 1, 2, 3, 4, 5]])
    mask = MMAMask(mod, seg, policy="mma", group_ids=grp, group_policy="bidirectional_image")
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],  # image: its whole image (group) and the turn's text (segment)
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask.to_dense()[0], expected)
    windowed = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],  # i=3: key 0 is text (not in the image's group), seen via the segment
        [0, 0, 1, 1, 1, 0, 0, 0],  # text i=4: only keys 2..4 (window 3)
        [0, 0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask.to_dense(window=3)[0], windowed)
    assert int(mask.num_allowed(window=3)) == int(windowed.sum())
    assert int(mask.num_allowed()) == int(expected.sum())


def test_paligemma_prefix_group():
    """PaliGemma: the prefix (image + prompt) is one group under "prefix"; the suffix is causal."""
    mod = torch.tensor([[1, 1, 0, 0, 0, 0]])
    grp = torch.tensor([[0, 0, 0, 0, 1, 2]])
    mask = MMAMask(mod, policy="causal", group_ids=grp, group_policy="prefix")
    expected = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    expected[:4, :4] = True
    assert torch.equal(mask.to_dense()[0], expected)


def test_random_masks_match_literal_rule():
    rng = random.Random(21)
    for case in range(120):
        L = rng.randint(1, 30)
        mod, seg, doc, grp, policy, gpolicy, window = random_case(rng, 2, L)
        mask = MMAMask(mod, seg, doc, policy=policy, group_ids=grp, group_policy=gpolicy)
        q_len = rng.randint(1, L)
        expected = rule(mod, seg, doc, grp, policy, gpolicy, window, q_len)
        assert torch.equal(mask.to_dense(q_len, window), expected), f"case {case}"
        assert torch.equal(mask.num_allowed(q_len, window), expected.sum((1, 2))), f"case {case}"


def test_window_fields_cached_and_zero_cost_when_unused():
    mod = torch.zeros(1, 10, dtype=torch.long)
    mask = MMAMask(mod)
    assert mask.meta.shape[1] == NUM_FIELDS and not mask.has_groups
    assert mask.window_fields(4) is mask.window_fields(4)
    assert mask.effective_window(10) is None and mask.effective_window(9) == 9
    # groups under a policy without pairs add nothing: the plain kernels run
    assert not MMAMask(mod, group_ids=torch.zeros_like(mod), group_policy="causal").has_groups
    assert MMAMask(mod, group_ids=torch.zeros_like(mod), group_policy="prefix").has_groups


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(window=0), ValueError, ["window", "0"]),
    (dict(window=-3), ValueError, ["window", "-3"]),
    (dict(window=2.5), TypeError, ["window", "2.5"]),
    (dict(window=True), TypeError, ["window", "True"]),
])
def test_bad_window(kwargs, exc, words):
    mask = MMAMask(torch.zeros(1, 8, dtype=torch.long))
    q = torch.randn(1, 1, 8, 16)
    for call in (lambda: mma_attention(q, q, q, mask, **kwargs), lambda: mask.to_dense(**kwargs),
                 lambda: MMAttention(**kwargs)):
        with pytest.raises(exc) as e:
            call()
        for w in words:
            assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("group_ids, document_ids, exc, words", [
    (torch.zeros(1, 7, dtype=torch.long), None, ValueError, ["group_ids", "(1, 7)"]),
    (torch.zeros(1, 8), None, TypeError, ["group_ids", "float32"]),
    ([[0] * 8], None, TypeError, ["group_ids", "list"]),
    (torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2]]), None, ValueError, ["group_ids", "value 0", "contiguous"]),
    (torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]]), ValueError,
     ["group_ids", "spans two documents", "position 2"]),
    (torch.zeros(1, 8, dtype=torch.long, device="meta"), None, ValueError, ["group_ids", "meta"]),
])
def test_bad_group_ids(group_ids, document_ids, exc, words):
    with pytest.raises(exc) as e:
        MMAMask(torch.zeros(1, 8, dtype=torch.long), document_ids=document_ids, group_ids=group_ids,
                group_policy="prefix")
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_group_policy():
    with pytest.raises(ValueError, match="group_policy.*'nope'"):
        MMAMask(torch.zeros(1, 4, dtype=torch.long), group_policy="nope")
    with pytest.raises(ValueError, match="group_policy.*40"):
        MMAMask(torch.zeros(1, 4, dtype=torch.long), group_policy=[(1, 40)])


# ----------------------------------------------------------------------------- tile ranges under windows
@triton.jit
def _store4(ptr, a, b, c, d):
    tl.store(ptr + 0, a)
    tl.store(ptr + 1, b)
    tl.store(ptr + 2, c)
    tl.store(ptr + 3, d)


@triton.jit
def _ranges_kernel(META, PADCUM, WIN, OUT_Q, OUT_K, smb, smf, spb, swb, swf, Lq, Lk, NQB, NKB, window,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr):
    i = tl.program_id(0)
    b = tl.program_id(1)
    meta_b = META + b * smb
    pad_b = PADCUM + b * spb
    win_b = WIN + b * swb
    if i < NQB:
        a0, a1, a2, a3 = _key_block_ranges(meta_b, smf, pad_b, i * BLOCK_M, Lq, Lk, BLOCK_M, BLOCK_N,
                                           win_b, swf, window, HAS_WINDOW)
        _store4(OUT_Q + (b * NQB + i) * 4, a0, a1, a2, a3)
    if i < NKB:
        c0, c1, c2, c3 = _query_block_ranges(meta_b, smf, pad_b, i * BLOCK_N, Lq, Lk, BLOCK_M, BLOCK_N,
                                             win_b, swf, window, HAS_WINDOW)
        _store4(OUT_K + (b * NKB + i) * 4, c0, c1, c2, c3)


def check_ranges(mask, Lq, BM, BN, window):
    """Sound (no tile with an allowed pair skipped) and exact (every unmasked tile fully allowed for
    its valid rows), from both sides; returns (tiles visited, tiles with work) of the query side."""
    B, Lk = mask.batch_size, mask.seq_len
    window = mask.effective_window(window)
    win = mask.window_fields(window) if window is not None else mask.meta
    nqb, nkb = triton.cdiv(Lq, BM), triton.cdiv(Lk, BN)
    out_q = torch.zeros(B, nqb, 4, dtype=torch.int32)
    out_k = torch.zeros(B, nkb, 4, dtype=torch.int32)
    _ranges_kernel[(max(nqb, nkb), B)](mask.meta, mask.padcum, win, out_q, out_k, mask.meta.stride(0),
                                       mask.meta.stride(1), mask.padcum.stride(0), win.stride(0), win.stride(1),
                                       Lq, Lk, nqb, nkb, window or 0, BLOCK_M=BM, BLOCK_N=BN,
                                       HAS_WINDOW=window is not None)
    dense = mask.to_dense(Lq, window)
    row_valid = mask.meta[:, 0, Lk - Lq:] >= 0
    visited = work = 0
    for b in range(B):
        for m, (n_lo, f_lo, f_hi, n_hi) in enumerate(out_q[b].tolist()):
            assert n_lo <= f_lo <= f_hi <= n_hi or f_lo == f_hi == n_hi
            rows = slice(m * BM, (m + 1) * BM)
            for n in range(nkb):
                tile = dense[b, rows, n * BN:(n + 1) * BN]
                inside = n_lo <= n < n_hi
                work += bool(tile.any())
                visited += inside
                assert inside or not tile.any(), f"row block {m} skips key block {n} holding allowed pairs"
                if f_lo <= n < f_hi:
                    assert (n + 1) * BN <= Lk and tile[row_valid[b, rows]].all(), f"tile ({m}, {n}) not fully allowed"
        for n, (m_lo, f_lo, f_hi, m_hi) in enumerate(out_k[b].tolist()):
            assert m_lo <= f_lo <= f_hi <= m_hi or f_lo == f_hi == m_hi
            keys = slice(n * BN, (n + 1) * BN)
            for m in range(nqb):
                tile = dense[b, m * BM:(m + 1) * BM, keys]
                assert m_lo <= m < m_hi or not tile.any(), f"key block {n} skips row block {m} holding allowed pairs"
                if f_lo <= m < f_hi:
                    assert tile[row_valid[b, m * BM:(m + 1) * BM]].all(), f"tile ({m}, {n}) not fully allowed in dK/dV"
    return visited, work


def test_window_ranges_random_sound_and_exact():
    rng = random.Random(5)
    for _ in range(40):
        L = rng.randint(1, 100)
        mod, seg, doc, grp, policy, gpolicy, window = random_case(rng, 2, L)
        if rng.random() < 0.2:  # padding inside documents too
            mod[0, rng.randrange(L)] = -1
        mask = MMAMask(mod, seg, doc, policy=policy, group_ids=grp, group_policy=gpolicy)
        check_ranges(mask, rng.randint(1, L), rng.choice([16, 32]), rng.choice([16, 32]), window)


@pytest.mark.parametrize("window", [1, 16, 40])
def test_window_ranges_tight_for_causal_text(window):
    """Plain causal text under a window: the forward visits exactly the tiles that hold work,
    and the unmasked band is used (not everything masked)."""
    L = 160
    mod = torch.zeros(1, L, dtype=torch.long)
    mask = MMAMask(mod)
    visited, work = check_ranges(mask, L, 16, 16, window)
    assert visited == work
    full_window = 16 * triton.cdiv(window, 16) + 16
    assert visited <= (L // 16) * (full_window // 16 + 1)


# ----------------------------------------------------------------------------- attention vs the fp64 oracle
def oracle(q, k, v, allowed, scale):
    """fp64 attention over a dense allowed mask; rows with no key give 0 (lse -inf)."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    return p @ v, lse


def check_attention(backend, dtype, ids, B, Hq, Hkv, Lq, Lk, D, window, seed=0):
    mod, seg, doc, grp, policy, gpolicy = ids
    mask = MMAMask(mod, seg, doc, policy=policy, group_ids=grp, group_policy=gpolicy)
    allowed = rule(mod, seg, doc, grp, policy, gpolicy, window, Lq)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(dtype).requires_grad_()
               for H, L in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk)))
    scale = D ** -0.5
    out, lse = mma_attention(q, k, v, mask, return_lse=True, backend=backend, window=window)
    do = torch.randn(out.shape, generator=g).to(dtype)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = oracle(q64, k64, v64, allowed, scale)
    rdq, rdk, rdv = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pout, plse = plain_attention(qp, kp, vp, allowed, scale)
    pdq, pdk, pdv = torch.autograd.grad(pout, (qp, kp, vp), do)
    for what, got, want, plain in (("out", out, ref, pout), ("lse", lse, ref_lse, plse), ("dq", dq, rdq, pdq),
                                   ("dk", dk, rdk, pdk), ("dv", dv, rdv, pdv)):
        assert_rule(what, got, want, plain, dtype)
    return mask, out, lse


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("window", [None, 1, 7, 20])
def test_groups_and_window_named(backend, window):
    """Gemma 3 style: images are groups (bidirectional), MMA segments, two packed documents,
    left padding in row 1, GQA, odd lengths."""
    B, L = 2, 45
    mod = torch.zeros(B, L, dtype=torch.long)
    mod[:, 3:12] = 1
    mod[:, 14:20] = 1
    mod[:, 30:36] = 1
    mod[1, :4] = -1
    seg = torch.zeros(B, L, dtype=torch.long)
    seg[:, 24:] = 1
    seg[:, 28:] = 2
    seg[:, 40:] = 3
    doc = torch.zeros(B, L, dtype=torch.long)
    doc[:, 28:] = 1
    grp = torch.arange(L).expand(B, L).clone()
    grp[:, 3:12] = 3
    grp[:, 14:20] = 14
    grp[:, 30:36] = 30
    ids = (mod, seg, doc, grp, "mma", "bidirectional_image")
    check_attention(backend, torch.float16, ids, B, 4, 2, L, L, 32, window, seed=1)
    check_attention(backend, torch.bfloat16, ids, B, 2, 1, 17, L, 16, window, seed=2)


@pytest.mark.parametrize("chunk", range(3))
def test_groups_and_window_random(chunk):
    rng = random.Random(300 + chunk)
    for case in range(8):
        Lk = rng.randint(1, 70)
        Lq = Lk if rng.random() < 0.5 else rng.randint(1, Lk)
        B = rng.randint(1, 2)
        Hq, Hkv = rng.choice([(1, 1), (2, 1), (4, 2)])
        D = rng.choice([16, 32])
        dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
        mod, seg, doc, grp, policy, gpolicy, window = random_case(rng, B, Lk)
        backend = "torch" if case % 3 == 0 else "triton"
        try:
            check_attention(backend, dtype, (mod, seg, doc, grp, policy, gpolicy), B, Hq, Hkv, Lq, Lk, D, window,
                            seed=case)
        except AssertionError as e:
            raise AssertionError(f"chunk {chunk} case {case}: {backend} {dtype} B={B} H={Hq}/{Hkv} Lq={Lq} Lk={Lk} "
                                 f"D={D} policy={policy} group_policy={gpolicy} window={window}\n{e}") from e


def test_reference_and_module_take_the_window():
    rng = random.Random(3)
    mod, seg, doc, grp, _, _, _ = random_case(rng, 2, 30)
    mask = MMAMask(mod, seg, doc, policy="mma", group_ids=grp, group_policy="bidirectional_image")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 30, 16, generator=g, dtype=torch.float64) for _ in range(3))
    allowed = rule(mod, seg, doc, grp, "mma", "bidirectional_image", 6)
    ref, _ = oracle(q, k, v, allowed, 0.25)
    torch.testing.assert_close(mma_attention_reference(q, k, v, mask, scale=0.25, window=6), ref)
    out = MMAttention(scale=0.25, window=6, backend="torch")(q.float(), k.float(), v.float(), mask)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    out = MMAttention(scale=0.25, window=6, backend="torch")(q.float(), k.float(), v.float(), modality_ids=mod,
                                                             segment_ids=seg, document_ids=doc, group_ids=grp)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="group_policy"):
        MMAttention(group_policy="prefix")(q.float(), k.float(), v.float(), mask)


# ----------------------------------------------------------------------------- FlexAttention, torch.compile
flex = pytest.importorskip("torch.nn.attention.flex_attention")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("policy, gpolicy, window, Lq", [
    ("mma", "bidirectional_image", 5, 50), ("causal", "prefix", 11, 50), ([(2, 0)], [(1, 2), (0, 1)], 3, 19),
    ("mma", "bidirectional_image", None, 19),
])
def test_against_flex(backend, policy, gpolicy, window, Lq):
    rng = random.Random(8)
    B, Lk, H, D = 2, 50, 2, 32
    mod, seg, doc = random_layout(rng, B, Lk, max_mod=2)
    grp = random_groups(rng, mod, doc)
    mask = MMAMask(mod, seg, doc, policy=policy, group_ids=grp, group_policy=gpolicy)
    mask_mod = flex_mask_mod(mod, seg, doc, policy, q_offset=Lk - Lq, group_ids=grp, group_policy=gpolicy,
                             window=window)
    block_mask = flex.create_block_mask(mask_mod, B, None, Lq, Lk, device="cpu")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for L in (Lq, Lk, Lk))
    ref, ref_lse = flex.flex_attention(q, k, v, block_mask=block_mask, return_lse=True)
    out, lse = mma_attention(q, k, v, mask, backend=backend, return_lse=True, window=window)
    valid = (mod[:, Lk - Lq:] != -1)[:, None, :].expand_as(lse)
    assert (out - ref)[valid].abs().max() < 2e-5
    assert (lse - ref_lse)[valid].abs().max() < 2e-5


def test_compiled_fullgraph_with_window_and_groups():
    B, L, H, D = 2, 24, 2, 16
    mod = torch.zeros(B, L, dtype=torch.long)
    mod[:, 2:8] = 1
    mod[0, 0] = -1
    seg = torch.zeros_like(mod)
    seg[:, 15:] = 1
    grp = torch.arange(L).expand(B, L).clone()
    grp[:, 2:8] = 2
    mask = MMAMask(mod, seg, group_ids=grp)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g, requires_grad=True) for _ in range(3))
    torch._dynamo.reset()

    def f(q, k, v, mask):
        return mma_attention(q, k, v, mask, window=4) + mma_attention(q, k, v, mask, window=9)

    out = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v, mask)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = sum(oracle(q64, k64, v64, rule(mod, seg, None, grp, "mma", "bidirectional_image", w), D ** -0.5)[0]
              for w in (4, 9))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    gq, = torch.autograd.grad(out.sum(), q)
    rq, = torch.autograd.grad(ref.sum(), q64)
    torch.testing.assert_close(gq.double(), rq, atol=1e-5, rtol=0)


@pytest.mark.parametrize("blocks, masked_n", [((16, 16), 64), ((64, 32), 64), ((16, 64), 64), ((16, 32), 16)])
def test_window_uneven_tile_shapes(monkeypatch, blocks, masked_n):
    """The window's range logic for BLOCK_M != BLOCK_N (the GPU uses 128 x 64 forward); masked loops narrower
    than the key tile (`triton_ops.MASKED_N`, the GPU's 128x128), and dK/dV's shorter than its row tile
    (`triton_ops.MASKED_M`, the GPU's 64x128), with groups and a window."""
    from mma_kernels.ops import triton_ops

    monkeypatch.setattr(triton_ops, "INTERPRET_BLOCKS", {"fwd": blocks, "dq": blocks, "dkdv": blocks[::-1]})
    monkeypatch.setattr(triton_ops, "MASKED_N", masked_n)
    monkeypatch.setattr(triton_ops, "MASKED_M", masked_n)
    rng = random.Random(sum(blocks))
    mod, seg, doc = random_layout(rng, 2, 90, max_mod=2)
    ids = (mod, seg, doc, random_groups(rng, mod, doc), "mma", "bidirectional_image")
    check_attention("triton", torch.float16, ids, 2, 2, 1, 90, 90, 16, 21, seed=7)
    check_attention("triton", torch.float32, ids, 2, 2, 1, 37, 90, 16, 5, seed=8)
