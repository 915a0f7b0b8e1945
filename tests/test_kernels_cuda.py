"""The kernel suite at GPU sizes (CUDA only; skipped cleanly elsewhere).

CPU counterparts: tests/test_kernels.py runs the same checks through the Triton interpreter.
At these lengths the float64 reference is the chunked PyTorch path run in float64 (it never
builds the L x L matrix); it equals the dense reference on CPU (tests/test_kernels.py).
"""
import pytest
import torch

from helpers import assert_rule, make_layout, plain_attention
from mma_kernels import MMAMask, mma_attention
from mma_kernels.ops.torch_ops import TorchMMAttention
from mma_kernels.reference import flex_mask_mod

pytestmark = pytest.mark.cuda


def _qkv(B, Hq, Hkv, Lq, Lk, D, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=g).to(dtype).requires_grad_()  # noqa: E731
    return mk(B, Hq, Lq, D), mk(B, Hkv, Lk, D), mk(B, Hkv, Lk, D)


def _reference64(q, k, v, mask, scale, g):
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out, lse = TorchMMAttention.apply(q64, k64, v64, mask, scale)
    grads = torch.autograd.grad(out, (q64, k64, v64), g.double())
    return out, lse, grads


@pytest.mark.parametrize("L", [1024, 4096, 16384])
@pytest.mark.parametrize("D", [64, 80, 96, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_sizes(L, D, dtype):
    B, Hq, Hkv = 1, 4, 2
    mod, seg, doc = make_layout("packed", B, L, seed=L)
    mask = MMAMask(mod.cuda(), seg.cuda(), doc.cuda())
    q, k, v = _qkv(B, Hq, Hkv, L, L, D, dtype, seed=D)
    out, lse = mma_attention(q, k, v, mask, return_lse=True)
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    ref, ref_lse, (rdq, rdk, rdv) = _reference64(q, k, v, mask, D ** -0.5, g)
    if L <= 4096:  # plain dense PyTorch in the same dtype: the tolerance yardstick
        qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
        pout, plse = plain_attention(qp, kp, vp, mask.to_dense(), D ** -0.5)
        pgrads = torch.autograd.grad(pout, (qp, kp, vp), g)
        for what, got, want, plain in (("out", out, ref, pout), ("lse", lse, ref_lse, plse), ("dq", dq, rdq, pgrads[0]),
                                       ("dk", dk, rdk, pgrads[1]), ("dv", dv, rdv, pgrads[2])):
            assert_rule(what, got, want, plain, dtype)
    else:  # 16K: the dense yardstick needs L^2 memory; bound by the dtype's resolution instead
        eps = torch.finfo(dtype).eps
        for got, want in ((out, ref), (dq, rdq), (dk, rdk), (dv, rdv)):
            assert (got.double() - want).abs().max() <= 8 * eps * want.abs().max() + 1e-5
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all()


@pytest.mark.parametrize("Hq, Hkv", [(8, 8), (8, 2), (8, 1)])
def test_gpu_gqa_short_queries(Hq, Hkv):
    L, Lq, D = 4096, 1000, 128
    mod, seg, doc = make_layout("multi_turn", 2, L, seed=1)
    mask = MMAMask(mod.cuda(), seg.cuda(), doc.cuda())
    q, k, v = _qkv(2, Hq, Hkv, Lq, L, D, torch.bfloat16, seed=2)
    out = mma_attention(q, k, v, mask)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref, _, rgrads = _reference64(q, k, v, mask, D ** -0.5, g)
    eps = torch.finfo(torch.bfloat16).eps
    for got, want in ((out, ref), *zip(grads, rgrads)):
        assert (got.double() - want).abs().max() <= 8 * eps * want.abs().max() + 1e-5


def test_gpu_flex_forward_and_backward():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    B, H, L, D = 2, 4, 2048, 128
    mod, seg, doc = make_layout("multi_image", B, L, seed=3)
    mod, seg, doc = mod.cuda(), seg.cuda(), doc.cuda()
    mask = MMAMask(mod, seg, doc)
    q, k, v = _qkv(B, H, H, L, L, D, torch.float32, seed=4)
    block_mask = flex.create_block_mask(flex_mask_mod(mod, seg, doc), B, None, L, L, device="cuda")
    qf, kf, vf = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = torch.compile(flex.flex_attention)(qf, kf, vf, block_mask=block_mask)
    out = mma_attention(q, k, v, mask)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    rgrads = torch.autograd.grad(ref, (qf, kf, vf), g)
    assert (out - ref).abs().max() < 1e-4
    for got, want in zip(grads, rgrads):
        assert (got - want).abs().max() < 1e-3


def test_gpu_128k_no_offset_overflow():
    """128K tokens, 32 heads: offsets past 2^31 elements must not wrap. Checks the last rows
    (bottom-right aligned queries) and a slice of dK/dV against the chunked reference."""
    L, Hq, Hkv, D = 131072, 32, 8, 128
    mod, seg, doc = make_layout("packed", 1, L, seed=5)
    mask = MMAMask(mod.cuda(), seg.cuda(), doc.cuda())
    q, k, v = _qkv(1, Hq, Hkv, L, L, D, torch.bfloat16, seed=6)
    out = mma_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    tail = 256
    ref_tail = TorchMMAttention.apply(q[:, :, -tail:].detach().double(), k.detach().double(), v.detach().double(),
                                      mask, D ** -0.5)[0]
    eps = torch.finfo(torch.bfloat16).eps
    assert (out[:, :, -tail:].double() - ref_tail).abs().max() <= 8 * eps * ref_tail.abs().max()
    out.backward(torch.ones_like(out))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
