"""`mma_attention(..., backend="flex")` against the float64 oracle (flash-attn tolerance rule).

On CPU FlexAttention runs eagerly and forward only; the backward is checked on CUDA.
"""
import random

import pytest
import torch

from helpers import assert_rule, make_layout, make_qkv, plain_attention, random_layout
from mma_kernels import MMAMask, mma_attention
from mma_kernels.flex import cached_block_mask
from mma_kernels.reference import mma_attention_reference

pytest.importorskip("torch.nn.attention.flex_attention")


def check_forward(dtype, B, Hq, Hkv, Lq, Lk, D, layout, policy, seed=0, device="cpu", backward=False):
    mod, seg, doc = make_layout(layout, B, Lk, seed=seed)
    mask = MMAMask(mod.to(device), seg.to(device), doc.to(device), policy=policy)
    q, k, v = (t.detach().to(device).requires_grad_(backward) for t in make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype, seed=seed + 1))
    out, lse = mma_attention(q, k, v, mask, return_lse=True, backend="flex")
    assert out.shape == (B, Hq, Lq, D) and out.dtype == dtype
    assert lse.shape == (B, Hq, Lq) and lse.dtype == torch.float32

    q64, k64, v64 = (t.detach().double().requires_grad_(backward) for t in (q, k, v))
    ref, ref_lse = mma_attention_reference(q64, k64, v64, mask, return_lse=True)
    qp, kp, vp = (t.detach().clone().requires_grad_(backward) for t in (q, k, v))
    pout, plse = plain_attention(qp, kp, vp, mask.to_dense(Lq), D ** -0.5)
    assert_rule("out", out, ref, pout, dtype)
    assert_rule("lse", lse, ref_lse, plse, dtype)

    pad_rows = (mod[:, Lk - Lq:] == -1)[:, None].expand(B, Hq, Lq).to(device)
    assert (out[pad_rows] == 0).all() and torch.isneginf(lse[pad_rows]).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[~pad_rows]).all()
    if backward:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 2)).to(device, dtype)
        grads = torch.autograd.grad(out, (q, k, v), g)
        rgrads = torch.autograd.grad(ref, (q64, k64, v64), g.double())
        pgrads = torch.autograd.grad(pout, (qp, kp, vp), g)
        for name, got, r, p in zip(("dq", "dk", "dv"), grads, rgrads, pgrads):
            assert_rule(name, got, r, p, dtype)
        pad_keys = (mod == -1)[:, None].expand(B, Hkv, Lk).to(device)
        assert (grads[0][pad_rows] == 0).all() and (grads[1][pad_keys] == 0).all() and (grads[2][pad_keys] == 0).all()


CASES = [  # dtype, B, Hq, Hkv, Lq, Lk, D, layout, policy
    (torch.float32, 2, 4, 2, 130, 130, 64, "multi_turn", "mma"),
    (torch.bfloat16, 2, 2, 2, 97, 97, 32, "packed", "mma"),
    (torch.float16, 2, 4, 1, 64, 150, 64, "left_pad", "bidirectional_image"),
    (torch.float32, 2, 2, 1, 33, 97, 16, "three_modal", [(1, 0), (2, 1)]),
    (torch.bfloat16, 3, 2, 2, 70, 70, 32, "right_pad", "prefix"),
    (torch.float32, 1, 2, 2, 1, 50, 32, "single_image", "causal"),
]


@pytest.mark.parametrize("dtype, B, Hq, Hkv, Lq, Lk, D, layout, policy", CASES)
def test_forward_cpu(dtype, B, Hq, Hkv, Lq, Lk, D, layout, policy):
    check_forward(dtype, B, Hq, Hkv, Lq, Lk, D, layout, policy)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, B, Hq, Hkv, Lq, Lk, D, layout, policy", CASES)
def test_forward_backward_cuda(dtype, B, Hq, Hkv, Lq, Lk, D, layout, policy):
    check_forward(dtype, B, Hq, Hkv, Lq, Lk, D, layout, policy, device="cuda", backward=True)


def test_groups_and_window_forward_cpu():
    """Groups and a causal window through mma_attention(backend="flex"), against float64 attention
    with the literal rule's dense mask (tests/test_groups_window.py: `rule`)."""
    from test_groups_window import random_groups, rule

    B, Hq, Hkv, Lq, Lk, D, W = 2, 4, 2, 50, 70, 32, 9
    rng = random.Random(5)
    mod, seg, doc = random_layout(rng, B, Lk, max_mod=2)
    mod[1, 60:] = -1
    grp = random_groups(rng, mod, doc)
    mask = MMAMask(mod, seg, doc, policy="mma", group_ids=grp, group_policy="bidirectional_image")
    q, k, v = (t.detach() for t in make_qkv(B, Hq, Hkv, Lq, Lk, D, torch.bfloat16, seed=6))
    out, lse = mma_attention(q, k, v, mask, return_lse=True, backend="flex", window=W)
    allowed = rule(mod, seg, doc, grp, "mma", "bidirectional_image", W, Lq)
    assert not torch.equal(allowed, rule(mod, seg, doc, grp, "mma", "bidirectional_image", None, Lq))
    ref, ref_lse = plain_attention(q.double(), k.double(), v.double(), allowed, D ** -0.5)
    pout, plse = plain_attention(q, k, v, allowed, D ** -0.5)
    assert_rule("out", out, ref, pout, torch.bfloat16)
    assert_rule("lse", lse, ref_lse, plse, torch.bfloat16)


def test_padding_keys_are_inert():
    """NaN and inf in padding keys/values do not reach any output (a masked score times NaN is NaN)."""
    mod, seg, doc = make_layout("right_pad", 2, 80, seed=3)
    mod[0, 10] = -1  # padding inside a document too
    mask = MMAMask(mod, seg, doc)
    q, k, v = (t.detach() for t in make_qkv(2, 2, 2, 80, 80, 32, torch.float32, seed=5))
    ref = mma_attention(q, k, v, mask, backend="torch")
    pad = (mod == -1)[:, None, :, None].expand_as(k)
    k, v = k.masked_fill(pad, float("nan")), v.masked_fill(pad, float("inf"))
    out = mma_attention(q, k, v, mask, backend="flex")
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < 1e-5


def test_block_mask_cached_per_mask_and_query_length():
    mod, seg, doc = make_layout("multi_image", 1, 64)
    mask = MMAMask(mod, seg, doc)
    q, k, v = (t.detach() for t in make_qkv(1, 2, 2, 64, 64, 16, torch.float32))
    mma_attention(q, k, v, mask, backend="flex")
    first = cached_block_mask(mask, 64)
    mma_attention(q, k, v, mask, backend="flex")  # a second layer: same BlockMask object
    assert cached_block_mask(mask, 64) is first
    short = cached_block_mask(mask, 5)
    assert short is not first and short.seq_lengths == (5, 64)
    assert mask.to_block_mask() is not first  # the public builder always builds


@pytest.mark.parametrize("B, Hq, Hkv", [(0, 2, 1), (2, 0, 1), (2, 0, 0), (0, 0, 0)])
def test_empty_batch_or_heads(B, Hq, Hkv):
    mod = torch.zeros(B, 6, dtype=torch.long)
    mask = MMAMask(mod, torch.zeros_like(mod))
    q, k, v = torch.randn(B, Hq, 4, 16, requires_grad=True), torch.randn(B, Hkv, 6, 16), torch.randn(B, Hkv, 6, 16)
    out, lse = mma_attention(q, k, v, mask, return_lse=True, backend="flex", window=2)
    assert out.shape == (B, Hq, 4, 16) and lse.shape == (B, Hq, 4)
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_errors():
    mod, seg, doc = make_layout("single_image", 1, 40)
    mask = MMAMask(mod, seg, doc)
    q, k, v = make_qkv(1, 2, 2, 40, 40, 16, torch.float32)  # require grad
    with pytest.raises(ValueError, match="backend: 'flex' has no backward on cpu"):
        mma_attention(q, k, v, mask, backend="flex")
    with torch.no_grad():
        assert torch.isfinite(mma_attention(q, k, v, mask, backend="flex")).all()
    with pytest.raises(ValueError, match="window"):
        mask.to_block_mask(window=0)
    with pytest.raises(TypeError, match="window"):
        mask.to_block_mask(window=2.5)
    with pytest.raises(TypeError, match="block_size"):
        mask.to_block_mask(block_size=16.0)
    with pytest.raises(ValueError, match="block_size"):
        mask.to_block_mask(block_size=(16, 0))
    with pytest.raises(ValueError, match="q_len"):
        mask.to_block_mask(q_len=41)
