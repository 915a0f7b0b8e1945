"""The buffers the Triton kernels read at any length: the mask fields with a stride that is a multiple of
`triton_ops.FIELD_ALIGN` (128, and of every key block) (`triton_ops._kernel_fields`) and the backward's row
statistics with a 16-multiple stride (`triton_ops._row_stats`).

At L not a multiple of 16 the kernels bound their field and statistics loads by those strides, so the loads
keep 16-element vectors (`benchmarks/results/static/odd_length_sm90.md`); the look-ahead tiles load their
keys' KMOD with no bound at all (every visited tile lies inside the stride). That is exact only if what lies
between L and the stride is inert: padding's fields, lse +inf, delta and 1/l 0. These tests pin those values
and run the kernels at odd lengths on tensors whose rows past L hold NaN: nothing past L may be read.
"""
import pytest
import torch

from mma_kernels import MMAMask, mma_attention
from mma_kernels.mask import MOD_NEXT, NUM_FIELDS, pad_field_values
from mma_kernels.ops import triton_ops

TEXT, IMAGE, PAD = 0, 1, -1


def _question_last(B, L, pad=0):
    """Text, an image, then its question up to the last token (the image rows look ahead to the end), with
    `pad` left padding tokens in batch row 1."""
    mod = torch.zeros(B, L, dtype=torch.long)
    mod[:, 8:40] = IMAGE
    seg = torch.zeros_like(mod)
    if pad:
        mod[1, :pad] = PAD
    return mod, seg, torch.zeros_like(mod)


@pytest.mark.parametrize("L, groups", [(97, False), (112, False), (256, False), (45, True)])
def test_kernel_fields_stride_and_tail(L, groups):
    mod, seg, doc = _question_last(2, L, pad=5)
    kw = dict(group_ids=seg.clone(), group_policy="bidirectional_image") if groups else {}
    mask = MMAMask(mod, seg, doc, **kw)
    F = mask.meta.shape[1]
    assert F == (NUM_FIELDS + 2 if groups else NUM_FIELDS)
    got = triton_ops._kernel_fields(mask)
    align = triton_ops.FIELD_ALIGN
    assert align % 128 == 0 and all(n <= align and align % n == 0 for _, n, _, _ in
                                    sum(triton_ops._CONFIGS.values(), []))  # key blocks (dK/dV: BLOCK_N)
    if L % align == 0:
        assert got is mask.meta
        return
    stride = got.stride(1)
    assert stride % align == 0 and L < stride < L + align and got.stride(0) == F * stride and got.stride(2) == 1
    assert torch.equal(got, mask.meta)
    tail = torch.as_strided(got, (2, F, stride), (F * stride, stride, 1))[:, :, L:]
    assert torch.equal(tail, torch.tensor(pad_field_values(L)[:F], dtype=torch.int32).view(1, F, 1).expand_as(tail))
    assert triton_ops._kernel_fields(mask) is got  # one copy per mask


def test_pad_field_values_are_a_padding_tokens_fields():
    """The tail holds exactly what the mask gives a padding token (MOD_NEXT aside: the end of its run)."""
    mod, seg, doc = _question_last(2, 50, pad=7)
    mask = MMAMask(mod, seg, doc)
    want = torch.tensor(pad_field_values(50)[:NUM_FIELDS], dtype=torch.int32)
    for f in range(NUM_FIELDS):
        if f != MOD_NEXT:
            assert torch.equal(mask.meta[1, f, :7], want[f].expand(7)), f


def test_row_stats_stride_and_tail():
    g = torch.Generator().manual_seed(0)
    lse2, linv, delta = (torch.randn(2, 3, 37, generator=g) for _ in range(3))
    a, b, c = triton_ops._row_stats(lse2, linv, delta)
    assert torch.equal(a, lse2) and torch.equal(b, linv) and torch.equal(c, delta)
    for t, tail in ((a, float("inf")), (b, 0.0), (c, 0.0)):
        assert t.stride(1) == 48 and t.stride(2) == 1
        full = torch.as_strided(t, (2, 3, 48), (t.stride(0), 48, 1))
        assert (full[..., 37:] == tail).all()
    a, b, c = triton_ops._row_stats(lse2, None, delta)  # 1/l not read: shares lse2's rows
    assert b.data_ptr() == a.data_ptr() and torch.equal(c, delta)


@pytest.mark.parametrize("L, pad, D, Hq, Hkv", [(97, 0, 64, 4, 2), (97, 5, 80, 2, 2), (45, 3, 128, 4, 1)])
def test_nothing_past_the_last_row_is_read(L, pad, D, Hq, Hkv):
    """q, k, v, dO as views into buffers whose rows past L hold NaN: output and gradients equal those of
    contiguous copies, bit for bit, at both TMA levels (padding: level 1) and under GQA."""
    mod, seg, doc = _question_last(2, L, pad)
    mask = MMAMask(mod, seg, doc)
    g = torch.Generator().manual_seed(L + pad)

    def view(h):
        buf = torch.full((2, h, L + 19, D), float("nan"), dtype=torch.bfloat16)
        buf[:, :, :L] = torch.randn(2, h, L, D, generator=g).to(torch.bfloat16)
        return buf[:, :, :L]

    q, k, v, do = view(Hq), view(Hkv), view(Hkv), view(Hq)
    runs = []
    for tensors in ((q, k, v), tuple(t.contiguous() for t in (q, k, v))):
        qq, kk, vv = (t.detach().requires_grad_() for t in tensors)
        out = mma_attention(qq, kk, vv, mask, backend="triton")
        out.backward(do if tensors[0] is q else do.contiguous())
        runs.append((out, qq.grad, kk.grad, vv.grad))
    for a, b in zip(*runs):
        assert torch.isfinite(a).all() and torch.equal(a, b)
