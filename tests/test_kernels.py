"""Triton kernels (interpreter on CPU) and the PyTorch path against the float64 reference.

Tolerance: the flash-attn rule (tests/helpers.py: assert_rule), never a loose rtol.
"""
import pytest
import torch

from fuzz_cases import make_case
from helpers import LAYOUTS, assert_rule, make_layout, make_qkv, plain_attention
from mma_kernels import MMAMask, mma_attention
from mma_kernels.ops import torch_ops, triton_ops
from mma_kernels.reference import mma_attention_reference
from oracle_check import check_against_oracle

BACKENDS = ["triton", "torch"]


def check_case(backend, dtype, B, Hq, Hkv, Lq, Lk, D, layout="multi_turn", policy="mma", seed=0,
               noncontiguous=False, ids=None):
    mod, seg, doc = ids if ids is not None else make_layout(layout, B, Lk, seed=seed)
    mask = MMAMask(mod, seg, doc, policy=policy)
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype, seed=seed + 1, noncontiguous=noncontiguous)
    scale = D ** -0.5
    out, lse = mma_attention(q, k, v, mask, return_lse=True, backend=backend)
    assert out.shape == (B, Hq, Lq, D) and out.dtype == dtype
    assert lse.shape == (B, Hq, Lq) and lse.dtype == torch.float32
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 2)).to(dtype)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = mma_attention_reference(q64, k64, v64, mask, return_lse=True)
    rdq, rdk, rdv = torch.autograd.grad(ref, (q64, k64, v64), g.double())

    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    pout, plse = plain_attention(qp, kp, vp, mask.to_dense(Lq), scale)
    pdq, pdk, pdv = torch.autograd.grad(pout, (qp, kp, vp), g)

    assert_rule("out", out, ref, pout, dtype)
    assert_rule("lse", lse, ref_lse, plse, dtype)
    assert_rule("dq", dq, rdq, pdq, dtype)
    assert_rule("dk", dk, rdk, pdk, dtype)
    assert_rule("dv", dv, rdv, pdv, dtype)

    pad_rows = (mod[:, Lk - Lq:] == -1)[:, None].expand(B, Hq, Lq)
    assert (out[pad_rows] == 0).all() and (dq[pad_rows] == 0).all()
    assert torch.isneginf(lse[pad_rows]).all() and torch.isfinite(lse[~pad_rows]).all()
    pad_keys = (mod == -1)[:, None].expand(B, Hkv, Lk)
    assert (dk[pad_keys] == 0).all() and (dv[pad_keys] == 0).all()
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, D", [(torch.float16, 64), (torch.float16, 80), (torch.float16, 96), (torch.float16, 128),
                                      (torch.bfloat16, 64), (torch.bfloat16, 80), (torch.bfloat16, 96), (torch.bfloat16, 128),
                                      (torch.float32, 64), (torch.float32, 96),
                                      (torch.bfloat16, 16), (torch.float16, 256)])
def test_dtypes_and_head_dims(backend, dtype, D):
    check_case(backend, dtype, B=2, Hq=4, Hkv=2, Lq=97, Lk=97, D=D)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Hq, Hkv", [(4, 4), (4, 2), (4, 1)])
def test_gqa(backend, Hq, Hkv):
    check_case(backend, torch.bfloat16, B=2, Hq=Hq, Hkv=Hkv, Lq=130, Lk=130, D=64, layout="multi_image")


@pytest.mark.parametrize("mode, D, split", [("split", 32, True), ("loop", 32, False), ("auto", 32, False),
                                            ("auto", 80, True)])
def test_gqa_dkdv_split_or_group_loop(monkeypatch, mode, D, split):
    """GQA's dK/dV both ways, each within the rule: fp32 shares per query head summed by the launcher
    (one dK/dV program per query head) or the in-kernel group loop (one per KV head); DKDV_GQA="auto"
    splits above a head-dim block of 64."""
    monkeypatch.setattr(triton_ops, "DKDV_GQA", mode)
    launched, launch = [], triton_ops._launch
    monkeypatch.setattr(triton_ops, "_launch", lambda kind, n, heads, *a, **kw: (
        launched.append((kind, heads, kw.get("SPLIT_GROUP"))), launch(kind, n, heads, *a, **kw))[-1])
    check_case("triton", torch.bfloat16, B=1, Hq=4, Hkv=2, Lq=70, Lk=70, D=D, layout="multi_image", seed=7)
    assert ("dkdv", 4 if split else 2, split) in launched


@pytest.mark.parametrize("share_bytes, launches", [(1, 3), (2 * 2 * 2 * 40 * 16 * 4 * 2, 2), (1 << 30, 1)])
def test_gqa_dkdv_split_bounds_its_shares(monkeypatch, share_bytes, launches):
    """The split dK/dV's fp32 shares stay within DKDV_SHARE_BYTES (at least one KV head's group): the launcher
    runs the kernel over a few KV heads at a time (here 3 KV heads, B=2: batch rows and head offsets both
    matter), with the same result each way."""
    monkeypatch.setattr(triton_ops, "DKDV_GQA", "split")
    monkeypatch.setattr(triton_ops, "DKDV_SHARE_BYTES", share_bytes)
    launched, launch = [], triton_ops._launch
    monkeypatch.setattr(triton_ops, "_launch", lambda kind, n, heads, *a, **kw: (
        launched.append((kind, heads)), launch(kind, n, heads, *a, **kw))[-1])
    check_case("triton", torch.float32, B=2, Hq=6, Hkv=3, Lq=40, Lk=40, D=16, layout="multi_image", seed=11)
    sizes = [h for kind, h in launched if kind == "dkdv"]
    assert len(sizes) == launches and sum(sizes) == 2 * 6


def test_dkdv_gqa_mode_checked(monkeypatch):
    monkeypatch.setattr(triton_ops, "DKDV_GQA", "atomics")
    q, k, v = make_qkv(1, 2, 1, 8, 8, 16, torch.float32, seed=0)
    out = mma_attention(q, k, v, MMAMask(*make_layout("multi_turn", 1, 8, seed=0)), backend="triton")
    with pytest.raises(ValueError, match="DKDV_GQA.*atomics"):
        out.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Lk, Lq", [(1, 1), (17, 17), (17, 5), (17, 1), (97, 97), (97, 40), (97, 1),
                                     (130, 130), (130, 63), (257, 257), (257, 100), (257, 1)])
def test_odd_lengths_and_short_queries(backend, Lk, Lq):
    check_case(backend, torch.bfloat16, B=2, Hq=2, Hkv=1, Lq=Lq, Lk=Lk, D=64, layout="multi_turn", seed=Lk + Lq)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("policy", ["mma", "causal", "bidirectional_image", "prefix", [(1, 0), (2, 1), (1, 1)]])
def test_layouts_and_policies(backend, layout, policy):
    check_case(backend, torch.float16, B=2, Hq=2, Hkv=1, Lq=48, Lk=48, D=64, layout=layout, policy=policy)


@pytest.mark.parametrize("layout", ["packed", "left_pad", "multi_turn"])
@pytest.mark.parametrize("blocks", [(16, 16), (64, 32), (16, 64)])
def test_uneven_tile_shapes(monkeypatch, layout, blocks):
    """The range logic must hold for BLOCK_M != BLOCK_N (the GPU uses 128 x 64 forward)."""
    monkeypatch.setattr(triton_ops, "INTERPRET_BLOCKS", {"fwd": blocks, "dq": blocks, "dkdv": blocks[::-1]})
    check_case("triton", torch.float16, B=2, Hq=2, Hkv=1, Lq=97, Lk=97, D=64, layout=layout, seed=5)
    check_case("triton", torch.float16, B=2, Hq=2, Hkv=1, Lq=33, Lk=97, D=64, layout=layout, seed=6)


@pytest.mark.parametrize("layout, blocks, Lq, tma", [
    ("packed", (32, 64), 97, "auto"),       # 16-key masked tiles in 64-key ones, descriptors (level 2)
    ("left_pad", (32, 64), 33, "auto"),     # padding: level 1 (V of masked tiles through pointers), Lq < Lk
    ("three_modal", (16, 32), 33, "auto"),  # 16 in 32, a non-uniform policy (the general rule)
    ("multi_turn", (16, 32), 33, "off"),    # pointer loads
])
def test_masked_loops_narrower_than_the_key_tile(monkeypatch, layout, blocks, Lq, tma):
    """Key tiles wider than MASKED_N (the GPU's 128x128): the masked loops walk the same keys in MASKED_N-key
    tiles, through descriptors of that width (TMA level 2 without padding, 1 with it) or pointer loads, the
    look-ahead loop hopping at that width; plain tiles run whole. Likewise dK/dV row tiles taller than MASKED_M
    (the GPU's 64x128): its masked loops walk the same rows in MASKED_M-row tiles."""
    monkeypatch.setattr(triton_ops, "INTERPRET_BLOCKS", {"fwd": blocks, "dq": blocks, "dkdv": blocks[::-1]})
    masked_n = 16
    monkeypatch.setattr(triton_ops, "MASKED_N", masked_n)
    monkeypatch.setattr(triton_ops, "MASKED_M", masked_n)
    monkeypatch.setattr(triton_ops, "TMA", tma)
    seen = []
    orig = triton_ops._launch
    monkeypatch.setattr(triton_ops, "_launch", lambda kind, *a, **meta: (seen.append((kind, meta)), orig(kind, *a, **meta))[1])
    mod, seg, doc = make_layout(layout, 2, 97, seed=8)
    padded = bool((mod == -1).any())
    assert padded == (layout == "left_pad")
    policy = "mma" if layout != "three_modal" else [(1, 0), (2, 1), (2, 0)]
    check_case("triton", torch.bfloat16, B=2, Hq=4, Hkv=2, Lq=Lq, Lk=97, D=64, seed=Lq, ids=(mod, seg, doc),
               policy=policy)
    for kind in ("fwd", "dq"):
        metas = [m for k, m in seen if k == kind]
        assert metas and all(m["MASKED_N"] == masked_n < blocks[1] for m in metas)
        assert {m["TMA"] for m in metas} == ({0} if tma == "off" else {1 if padded else 2})
    metas = [m for k, m in seen if k == "dkdv"]
    assert metas and all(m["MASKED_M"] == masked_n < blocks[1] for m in metas)


@pytest.mark.parametrize("kind, dtype, block_d, widest", [
    ("fwd", torch.bfloat16, 64, 128 * 128), ("fwd", torch.float16, 128, 128 * 128), ("fwd", torch.float32, 64, 128 * 64),
    ("fwd", torch.bfloat16, 256, 64 * 64), ("dq", torch.bfloat16, 64, 128 * 128), ("dq", torch.bfloat16, 128, 128 * 64),
    ("dq", torch.float32, 64, 128 * 64), ("dq", torch.float16, 256, 64 * 64), ("dkdv", torch.bfloat16, 128, 64 * 128),
    ("dkdv", torch.float16, 64, 32 * 128), ("dkdv", torch.float32, 128, 32 * 128), ("dkdv", torch.bfloat16, 256, 32 * 128)])
def test_autotune_prune_keeps_tiles_that_fit(kind, dtype, block_d, widest):
    """128x128 tiles for 16-bit inputs only, the forward's up to a head-dim block of 128, dQ's up to 64 (spill-free
    there on sm_90: benchmarks/results/static/sm90.md); 128x64 otherwise; 64x64 above 128. dK/dV's 64x128 for
    16-bit inputs up to a head-dim block of 128, and not under the GQA group loop."""
    q = torch.empty(1, 1, 1, block_d, dtype=dtype, device="meta")
    small = 128 * 64 if kind != "dkdv" else 32 * 128
    for lq, group, split, most in ((4096, 4, True, widest), (4096, 1, False, widest), (16, 4, True, min(widest, small)),
                                   (4096, 4, False, widest if kind != "dkdv" else 32 * 128)):
        named = {"BLOCK_D": block_d, "Q": q, "Lq": lq, "GROUP": group}
        kept = triton_ops._prune(kind, triton_ops._configs(kind), named, SPLIT_GROUP=split)
        sizes = [c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in kept]
        assert max(sizes) == most and all(s <= most for s in sizes), (lq, group, split)
        assert [c for c in triton_ops._configs(kind) if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= most] == kept


def test_autotune_key_holds_the_document_class(monkeypatch):
    """The autotune key separates one long document from packed short ones (`triton_ops._doc_bucket`: the
    work-weighted mean document length, `MMAMask.doc_length`), whose best tiles differ; every kernel gets it."""
    from mma_kernels.ops.library import mask_from_fields

    L = 512
    one = MMAMask(torch.zeros(1, L, dtype=torch.int32), torch.zeros(1, L, dtype=torch.int32))
    docs = torch.arange(L).div(64, rounding_mode="floor")[None]  # eight documents of 64 tokens
    packed = MMAMask(torch.zeros(1, L, dtype=torch.int32), docs, docs)
    # a long document beside short ones: weighted by work (sum d^2 / sum d = 318), not the plain mean (102)
    mixed_doc = torch.cat([torch.zeros(400), torch.arange(112).div(28, rounding_mode="floor") + 1]).int()[None]
    mixed = MMAMask(torch.zeros(1, L, dtype=torch.int32), mixed_doc, mixed_doc)
    padded = MMAMask(torch.cat([torch.full((1, 12), -1), torch.zeros(1, L - 12)], 1).int(), torch.zeros(1, L).int())
    assert (one.doc_length, packed.doc_length, mixed.doc_length, padded.doc_length) == (512, 64, 318, 500)
    assert [triton_ops._doc_bucket(m) for m in (one, packed, mixed, padded)] == [2, 0, 1, 1]
    assert triton_ops._doc_bucket(mask_from_fields(one.meta, one.padcum)) == 0
    big = MMAMask(torch.zeros(1, 1 << 15, dtype=torch.int32), torch.zeros(1, 1 << 15, dtype=torch.int32))
    assert triton_ops._doc_bucket(big) == 6  # capped: 8K tokens and longer
    for kind in ("fwd", "dq", "dkdv"):
        assert "DOC_BUCKET" in triton_ops._tuned[kind].keys and "LQ_BUCKET" in triton_ops._tuned[kind].keys
    seen = []
    orig = triton_ops._launch
    monkeypatch.setattr(triton_ops, "_launch", lambda kind, n, h, args, **meta: (seen.append((kind, args)), orig(kind, n, h, args, **meta))[1])
    q, k, v = (torch.randn(1, 1, 256, 16, requires_grad=True) for _ in range(3))
    mask = MMAMask(torch.zeros(1, 256, dtype=torch.int32), torch.zeros(1, 256, dtype=torch.int32))
    mma_attention(q, k, v, mask, backend="triton").sum().backward()
    got = {kind: dict(zip(triton_ops._raw[kind].arg_names, args))["DOC_BUCKET"] for kind, args in seen}
    assert got == {"fwd": 1, "dq": 1, "dkdv": 1}, got


@pytest.mark.parametrize("padded", [False, True])
def test_registered_op_keeps_the_masks_host_figures(monkeypatch, padded):
    """The Hugging Face glue (and `torch.compile`) call the registered op (`ops.library`), which rebuilds the mask
    from its fields: outside a compiled region the mask's `pad_keys` and `doc_length` go along, so the kernels
    get TMA level 2 without padding (what dK/dV's 64x128 tile needs) and the autotune key its document class."""
    from mma_kernels.ops.library import mma_attention_op

    monkeypatch.setattr(triton_ops, "TMA", "auto")
    seen = []
    orig = triton_ops._launch
    monkeypatch.setattr(triton_ops, "_launch", lambda kind, n, h, args, **meta: (seen.append((kind, args, meta)), orig(kind, n, h, args, **meta))[1])
    mod = torch.zeros(1, 256, dtype=torch.int32)
    if padded:
        mod[:, :3] = -1
    mask = MMAMask(mod, torch.zeros(1, 256, dtype=torch.int32))
    q, k, v = (torch.randn(1, 1, 256, 16, requires_grad=True) for _ in range(3))
    out, lse = mma_attention_op(q, k, v, mask, 0.25, "triton")
    out.sum().backward()
    assert {kind for kind, _, _ in seen} == {"fwd", "dq", "dkdv"}
    for kind, args, meta in seen:
        assert meta["TMA"] == (1 if padded else 2), (kind, meta["TMA"])
        assert dict(zip(triton_ops._raw[kind].arg_names, args))["DOC_BUCKET"] == triton_ops._doc_bucket(mask)
    assert triton_ops._doc_bucket(mask) == (0 if padded else 1)  # 253 or 256 tokens


@pytest.mark.parametrize("meta, tall", [
    ({}, True), ({"TMA": 1}, False), ({"TMA": 0}, False), ({"HAS_WINDOW": True}, False), ({"HAS_GROUPS": True}, False),
    ({"HAS_QPOS": True}, False), ({"SPLIT_GROUP": False}, False), ({"SPLIT_GROUP": False, "GROUP": 1}, True)])
def test_tall_dkdv_tile_only_where_it_fits(meta, tall):
    """dK/dV's 64x128 tile only where it compiles spill-free (`triton_ops._dkdv_tall_fits`): q/dO through
    descriptors (level 2: no padding), the plain rule, no query positions, no GQA group loop."""
    q = torch.empty(1, 1, 1, 128, dtype=torch.bfloat16, device="meta")
    named = {"BLOCK_D": 128, "Q": q, "Lq": 4096, "GROUP": meta.pop("GROUP", 4)}
    kw = dict({"TMA": 2, "SPLIT_GROUP": True, "HAS_GROUPS": False, "HAS_WINDOW": False, "HAS_QPOS": False}, **meta)
    kept = triton_ops._prune("dkdv", triton_ops._configs("dkdv"), named, **kw)
    assert ((64, 128) in [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in kept]) == tall


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_views(backend):
    check_case(backend, torch.bfloat16, B=2, Hq=4, Hkv=2, Lq=70, Lk=70, D=64, noncontiguous=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_padded_row_and_mid_padding(backend):
    mod, seg, doc = make_layout("single_image", 3, 40)
    mod[1] = -1  # a whole row of padding
    mod[2, 20:23] = -1  # padding inside a document
    check_case(backend, torch.float16, B=3, Hq=2, Hkv=2, Lq=40, Lk=40, D=64, ids=(mod, seg, doc))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout, Hq, Hkv, Lq, dtype", [
    ("left_pad", 2, 1, 50, torch.float32),      # padding queries and keys
    ("packed", 4, 1, 21, torch.float32),        # GQA, Lq < Lk, document starts inside the query rows
    ("right_pad", 4, 2, 1, torch.float16),      # one query row
    ("three_modal", 2, 2, 33, torch.bfloat16),  # look-ahead rows inside the queries
])
def test_gradient_through_lse(backend, layout, Hq, Hkv, Lq, dtype):
    """lse is an output: a loss on out and lse differentiates through both (fp64 oracle, flash-attn rule)."""
    mod, seg, doc = make_layout(layout, 2, 50, seed=4)
    mod[1, 30] = -1  # padding inside a document too
    check_against_oracle(make_case(mod, seg, doc, "mma" if layout != "three_modal" else [(1, 0), (2, 1), (2, 0)],
                                   Hq=Hq, Hkv=Hkv, Lq=Lq, dtype=dtype, seed=3, with_lse=True), backend)


@pytest.mark.parametrize("Lq", [90, 41])
def test_cpu_path_several_query_chunks(monkeypatch, Lq):
    """The CPU path in 16-row query chunks (normally one chunk below B*Hq*Lq*Lk = 4M): every chunk
    is computed, and chunks holding only padding queries are skipped correctly (fp64 oracle)."""
    monkeypatch.setattr(torch_ops, "_CHUNK_ELEMS", 1)  # the smallest chunk: 16 query rows
    chunks = []
    orig = torch_ops._chunks

    def spy(*args, **kwargs):
        for c in orig(*args, **kwargs):
            chunks.append(c[2] is None)  # True: a chunk of padding queries only
            yield c

    monkeypatch.setattr(torch_ops, "_chunks", spy)
    mod, seg, doc = make_layout("multi_turn", 2, 90, seed=1)
    mod[:, :35] = -1  # query rows 0..34 padding in both batch rows: padding-only chunks when Lq = Lk
    mod[1, 60:64] = -1
    check_against_oracle(make_case(mod, seg, doc, Hq=2, Hkv=1, Lq=Lq, dtype=torch.float32, seed=Lq,
                                   with_lse=True), "torch")
    n_fwd = len(chunks) // 2  # forward and backward each walk the chunks
    assert n_fwd == -(-Lq // 16), f"expected {-(-Lq // 16)} query chunks, got {n_fwd}"
    assert any(chunks) == (Lq == 90)


def test_custom_scale():
    mod, seg, doc = make_layout("single_image", 1, 33)
    mask = MMAMask(mod, seg, doc)
    q, k, v = make_qkv(1, 2, 2, 33, 33, 32, torch.float32)
    for backend in BACKENDS:
        out = mma_attention(q, k, v, mask, scale=0.3, backend=backend)
        ref = mma_attention_reference(q.double(), k.double(), v.double(), mask, scale=0.3)
        assert (out.double() - ref).abs().max() < 1e-5
