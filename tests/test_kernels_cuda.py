"""The kernel suite at GPU sizes (CUDA only; skipped cleanly elsewhere).

CPU counterparts: tests/test_kernels.py and tests/test_fuzz.py run the same checks through the
Triton interpreter. The reference is the independent float64 rule (tests/oracle.py: the mask from
the raw ids, plain dense attention), evaluated a block of query rows at a time so that it never
holds the L x L matrix; the tolerance is the flash-attn rule against plain PyTorch attention in the
same dtype (tests/helpers.py: assert_rule), evaluated the same way.
"""
import pytest
import torch

import oracle
from helpers import assert_rule, make_layout, plain_attention
from mma_kernels import MMAMask, mma_attention
from mma_kernels.reference import flex_mask_mod
from oracle_check import plain_yardstick

pytestmark = pytest.mark.cuda


def _qkv(B, Hq, Hkv, Lq, Lk, D, dtype, seed, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    mk = lambda *s: torch.randn(*s, device=device, generator=g).to(dtype).requires_grad_()  # noqa: E731
    return mk(B, Hq, Lq, D), mk(B, Hkv, Lk, D), mk(B, Hkv, Lk, D)


def _rows_mask(mod, seg, doc, policy, Lq, device):
    return lambda r0, r1: oracle.allowed(mod, seg, doc, policy, q_len=Lq, rows=(r0, r1)).to(device)


def plain_chunked(q, k, v, ok_rows, scale, dout, chunk):
    """Plain attention in q's dtype (the yardstick), `chunk` query rows at a time: out, lse and dq
    per chunk, dk/dv summed over the chunks in fp32 and rounded once, as one dense call would."""
    outs, lses, dqs = [], [], []
    dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv = torch.zeros_like(dk)
    for r0 in range(0, q.shape[2], chunk):
        r1 = min(q.shape[2], r0 + chunk)
        out, lse, dq, gk, gv = plain_yardstick(q[:, :, r0:r1], k, v, ok_rows(r0, r1), scale, dout[:, :, r0:r1], None)
        outs.append(out)
        lses.append(lse)
        dqs.append(dq)
        dk += gk.float()
        dv += gv.float()
    return torch.cat(outs, 2), torch.cat(lses, 2), torch.cat(dqs, 2), dk.to(k.dtype), dv.to(v.dtype)


def check_gpu_case(mod, seg, doc, policy, Hq, Hkv, Lq, D, dtype, seed, device="cuda", backend="auto", chunk=512):
    """Forward and backward of `mma_attention` against the fp64 oracle, flash-attn rule."""
    B, Lk = mod.shape
    mask = MMAMask(mod.to(device), seg.to(device), doc.to(device), policy=policy)
    q, k, v = _qkv(B, Hq, Hkv, Lq, Lk, D, dtype, seed, device)
    out, lse = mma_attention(q, k, v, mask, return_lse=True, backend=backend)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    ok_rows = _rows_mask(mod, seg, doc, policy, Lq, device)
    scale = D ** -0.5
    ref = oracle.attention64_with_grads(q, k, v, ok_rows, scale, dout, chunk=chunk)
    plain = plain_chunked(q, k, v, ok_rows, scale, dout, chunk)
    for what, got, want, yard in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), ref, plain):
        assert_rule(what, got, want, yard, dtype)
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()


@pytest.mark.parametrize("L", [1024, 4096, 16384])
@pytest.mark.parametrize("D", [64, 80, 96, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_sizes(L, D, dtype):
    mod, seg, doc = make_layout("packed", 1, L, seed=L)
    check_gpu_case(mod, seg, doc, "mma", 4, 2, L, D, dtype, seed=D, chunk=2048 if L <= 4096 else 512)


@pytest.mark.parametrize("Hq, Hkv", [(8, 8), (8, 2), (8, 1)])
def test_gpu_gqa_short_queries(Hq, Hkv):
    mod, seg, doc = make_layout("multi_turn", 2, 4096, seed=1)
    check_gpu_case(mod, seg, doc, "mma", Hq, Hkv, 1000, 128, torch.bfloat16, seed=2)


@pytest.mark.parametrize("policy", [[(1, 0), (2, 0), (1, 2)], "prefix"])
def test_gpu_three_modalities_fp32(policy):
    """fp32 (IEEE dots, no TF32) with modality-2 look-ahead, left padding and packed documents."""
    mod, seg, doc = make_layout("three_modal", 2, 2048, seed=4)
    mod[1, :100] = -1
    check_gpu_case(mod, seg, doc, policy, 4, 2, 777, 64, torch.float32, seed=5)


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


def check_tail(q, k, v, out, mod, seg, doc, tail, step=32):
    """The last `tail` query rows of `out` against the fp64 oracle (flash-attn rule), `step` rows at a time."""
    L, D = k.shape[2], q.shape[-1]
    ok_rows = _rows_mask(mod, seg, doc, "mma", L, q.device)
    refs, plains = [], []
    with torch.no_grad():
        for r in range(L - tail, L, step):
            qc, ok = q[:, :, r:r + step].detach(), ok_rows(r, r + step)
            refs.append(oracle.attention64(qc, k.detach(), v.detach(), ok, D ** -0.5)[0])
            plains.append(plain_attention(qc, k.detach(), v.detach(), ok, D ** -0.5)[0])
    assert_rule("out", out[:, :, -tail:], torch.cat(refs, 2), torch.cat(plains, 2), q.dtype)


def test_gpu_128k_no_offset_overflow():
    """128K tokens, 32 heads: offsets past 2^31 elements must not wrap. Checks the last rows
    (bottom-right aligned queries) against the fp64 oracle and that every gradient is finite."""
    L, Hq, Hkv, D = 131072, 32, 8, 128
    mod, seg, doc = make_layout("packed", 1, L, seed=5)
    mask = MMAMask(mod.cuda(), seg.cuda(), doc.cuda())
    q, k, v = _qkv(1, Hq, Hkv, L, L, D, torch.bfloat16, seed=6)
    out = mma_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    check_tail(q, k, v, out, mod, seg, doc, tail=256)
    out.backward(torch.ones_like(out))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
