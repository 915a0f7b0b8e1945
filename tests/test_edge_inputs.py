"""Never silently wrong at the edges (issue 13 points 1-2): inert padding, empty inputs, id ranges,
scale, devices, double backward, policy generators."""
import math

import numpy as np
import pytest
import torch

from mma_kernels import MMAMask, MMAttention, mma_attention
from mma_kernels.reference import mma_attention_reference

BACKENDS = ["triton", "torch"]


# ----------------------------------------------------------------------------- padding is inert
def _run(backend, q, k, v, mask, do, dlse_w, window):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    if backend == "reference":
        out, lse = mma_attention_reference(q, k, v, mask, return_lse=True, window=window)
    else:
        out, lse = mma_attention(q, k, v, mask, return_lse=True, backend=backend, window=window)
    loss = (out * do).sum() + (torch.where(torch.isfinite(lse), lse, 0.0) * dlse_w).sum()
    return (out, lse, *torch.autograd.grad(loss, (q, k, v)))


def _poison(x, positions, values):
    """x [B, H, L, D] with every row at `positions` (bool [B, L]) overwritten by cycling `values`."""
    x = x.detach().clone()
    for i, (b, j) in enumerate(positions.nonzero().tolist()):
        x[b, :, j] = values[i % len(values)]
    return x


LAYOUTS = {
    # the example: NaN at trailing padding key 7 turned every Triton row NaN
    "issue": ([[0, 1, 1, -1, 0, 0, 0, -1]], [[0, 0, 0, 0, 0, 0, 1, 1]], None, None),
    "left_right_mid": ([[-1, -1, 0, 1, 1, 0, -1, 0, 0, 0, 0, -1], [0, 0, 1, 1, 0, 0, 0, 0, 0, -1, -1, -1]],
                       [[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]] * 2, None, None),
    "groups_docs": ([[1, 1, -1, 0, 0, 1, 1, 0, 0, -1, -1, 0, 0, 0, 0, -1] * 3],
                    [[0] * 8 + [1] * 8 + [2] * 8 + [3] * 8 + [4] * 16], [[0] * 24 + [1] * 24],
                    [[0, 0, 0, 1, 2, 3, 3] + list(range(4, 45))]),
}


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("layout, dtype, Lq, window", [
    ("issue", torch.float32, 8, None), ("issue", torch.bfloat16, 5, 2),
    ("left_right_mid", torch.float16, 12, None), ("left_right_mid", torch.float32, 7, 3),
    ("groups_docs", torch.float32, 48, None), ("groups_docs", torch.bfloat16, 48, 5),
])
def test_padding_is_inert(backend, layout, dtype, Lq, window):
    """NaN/inf/huge values in K, V at padding keys and in q, dO, dlse at padding queries give exactly
    the results of zeros there: bitwise equal outputs, lse and gradients, and zero gradients at padding."""
    mod, seg, doc, grp = (torch.tensor(x) if x is not None else None for x in LAYOUTS[layout])
    B, Lk = mod.shape
    mask = MMAMask(mod, seg, doc, group_ids=grp, group_policy="bidirectional_image")
    Hq, Hkv, D = 4, 2, 16
    g = torch.Generator().manual_seed(0)
    pad_k = mod == -1
    pad_q = pad_k[:, Lk - Lq:]
    clean = [torch.randn(B, H, L, D, generator=g).to(dtype) for H, L in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk))]
    do = torch.randn(B, Hq, Lq, D, generator=g).to(dtype)
    w = torch.randn(B, Hq, Lq, generator=g)
    q, k, v = (_poison(t, p, [0.0]) for t, p in zip(clean, (pad_q, pad_k, pad_k)))
    do0 = _poison(do, pad_q, [0.0])
    w0 = torch.where(pad_q[:, None], 0.0, w)
    bad = [float("nan"), float("inf"), float("-inf"), 3e4 if dtype == torch.float16 else 1e30]
    qb, kb, vb, dob = _poison(q, pad_q, bad), _poison(k, pad_k, bad), _poison(v, pad_k, bad[::-1]), _poison(do0, pad_q, bad)
    wb = torch.where(pad_q[:, None], float("nan"), w0)
    ref = _run(backend, q, k, v, mask, do0, w0, window)
    got = _run(backend, qb, kb, vb, mask, dob, wb, window)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, ref):
        assert torch.equal(a, b), f"{name} differs once padding holds NaN/inf"
    out, lse, dq, dk, dv = got
    assert torch.isfinite(out).all() and torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
    assert (out.transpose(1, 2)[pad_q] == 0).all() and (dq.transpose(1, 2)[pad_q] == 0).all()
    assert (dk.transpose(1, 2)[pad_k] == 0).all() and (dv.transpose(1, 2)[pad_k] == 0).all()
    assert torch.isneginf(lse.transpose(1, 2)[pad_q]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_past_the_keys_is_never_read(backend):
    """k, v as views into a longer buffer whose tail is NaN (a KV cache): only Lk keys are read."""
    mod = torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]])
    mask = MMAMask(mod, torch.tensor([[0] * 6 + [1] * 5]))
    g = torch.Generator().manual_seed(1)
    buf = torch.randn(2, 1, 2, 40, 16, generator=g)
    buf[:, :, :, 11:] = float("nan")
    k, v = buf[0, :, :, :11], buf[1, :, :, :11]
    q = torch.randn(1, 2, 3, 16, generator=g)
    out = mma_attention(q, k, v, mask, backend=backend)
    ref = mma_attention_reference(q.double(), k.double(), v.double(), mask)
    assert (out.double() - ref).abs().max() < 1e-5


# ----------------------------------------------------------------------------- empty batch and heads
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B, Hq, Hkv", [(0, 2, 1), (2, 0, 1), (2, 0, 0), (0, 0, 0)])
def test_empty_batch_or_heads(backend, B, Hq, Hkv):
    mod = torch.zeros(B, 6, dtype=torch.long)
    mask = MMAMask(mod, torch.zeros_like(mod))
    q = torch.randn(B, Hq, 4, 16, requires_grad=True)
    k = torch.randn(B, Hkv, 6, 16, requires_grad=True)
    v = torch.randn(B, Hkv, 6, 16, requires_grad=True)
    out, lse = mma_attention(q, k, v, mask, return_lse=True, backend=backend, window=2)
    assert out.shape == (B, Hq, 4, 16) and lse.shape == (B, Hq, 4)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and not k.grad.any()
    assert int(mask.num_allowed().numel()) == B


# ----------------------------------------------------------------------------- ids over their whole range
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8, torch.uint8])
def test_ids_anywhere_in_their_range(dtype):
    info = torch.iinfo(dtype)
    mod = torch.tensor([[0, 1, 1, 0, 0, -1, 0, 0]])
    seg = torch.tensor([[info.min] * 4 + [info.max] * 4], dtype=dtype)
    doc = torch.tensor([[info.max] * 8], dtype=dtype)
    grp = torch.tensor([[info.min, info.max, info.max, info.min + 1, 3, 3, info.max - 1, info.min + 2]], dtype=dtype)
    mask = MMAMask(mod, seg, doc, group_ids=grp, group_policy="prefix")
    same = MMAMask(mod, torch.tensor([[0] * 4 + [1] * 4]), None, group_ids=torch.tensor([[0, 1, 1, 2, 3, 3, 4, 5]]),
                   group_policy="prefix")
    assert torch.equal(mask.to_dense(), same.to_dense())
    with pytest.raises(ValueError, match=f"segment_ids: value {info.max} .* not one contiguous run"):
        MMAMask(mod, torch.tensor([[info.max, info.max, 0, 0, info.max, 0, 0, 0]], dtype=dtype))


# ----------------------------------------------------------------------------- scale
def _qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 8, 16, generator=g, dtype=torch.float32) for _ in range(3)]


@pytest.mark.parametrize("scale", [0.25, np.float32(0.25), np.float64(0.25), torch.tensor(0.25),
                                   torch.tensor(0.25, dtype=torch.float64), 1, np.int64(1)])
def test_scale_accepts_real_numbers(scale):
    q, k, v = _qkv()
    mask = MMAMask(torch.zeros(1, 8, dtype=torch.long))
    ref = mma_attention_reference(q.double(), k.double(), v.double(), mask, scale=float(scale))
    for backend in BACKENDS:
        out = mma_attention(q, k, v, mask, scale=scale, backend=backend)
        assert (out.double() - ref).abs().max() < 1e-5
    assert MMAttention(scale=scale).scale == float(scale)


@pytest.mark.parametrize("scale, exc", [
    (True, TypeError), (np.bool_(True), TypeError), (torch.tensor(True), TypeError), ("0.5", TypeError),
    (torch.tensor([0.5]), TypeError), (1j, TypeError), (float("inf"), ValueError), (float("nan"), ValueError),
    (0.0, ValueError), (-1.0, ValueError), (np.float32("inf"), ValueError), (torch.tensor(float("nan")), ValueError),
    (torch.tensor(-2.0), ValueError),
])
def test_scale_rejects(scale, exc):
    q, k, v = _qkv()
    mask = MMAMask(torch.zeros(1, 8, dtype=torch.long))
    for call in (lambda: mma_attention(q, k, v, mask, scale=scale), lambda: MMAttention(scale=scale),
                 lambda: mma_attention_reference(q, k, v, mask, scale=scale)):
        with pytest.raises(exc, match="scale"):
            call()


# ----------------------------------------------------------------------------- devices
@pytest.mark.parametrize("name", ["modality_ids", "segment_ids", "document_ids", "group_ids"])
def test_meta_device_ids_rejected(name):
    ids = {n: torch.zeros(1, 8, dtype=torch.long) for n in ("modality_ids", "segment_ids", "document_ids", "group_ids")}
    ids[name] = ids[name].to("meta")
    with pytest.raises(ValueError, match=f"{name}: .*meta"):
        MMAMask(**ids)


# ----------------------------------------------------------------------------- double backward
@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_raises_naming_the_op(backend):
    q, k, v = (t.requires_grad_() for t in _qkv())
    mask = MMAMask(torch.zeros(1, 8, dtype=torch.long))
    out = mma_attention(q, k, v, mask, backend=backend)
    with pytest.raises(RuntimeError, match="mma_attention: double backward"):
        torch.autograd.grad(out.sum(), (q, k, v), create_graph=True)
    # a plain backward still works afterwards
    out = mma_attention(q, k, v, mask, backend=backend)
    assert all(g is not None for g in torch.autograd.grad(out.sum(), (q, k, v)))


# ----------------------------------------------------------------------------- policies as generators
def test_policy_generator_stored_as_pairs():
    mod = torch.tensor([[0, 1, 2, 0, 2, 1]])
    seg = torch.zeros_like(mod)
    mask = MMAMask(mod, seg, policy=((a, b) for a, b in [(1, 0), (2, 1)]),
                   group_ids=torch.zeros_like(mod), group_policy=(p for p in [(0, 2)]))
    assert mask.policy == frozenset({(1, 0), (2, 1)}) and mask.group_policy == frozenset({(0, 2)})
    assert "pairs[(1, 0), (2, 1)]" in repr(mask) and "pairs[(0, 2)]" in repr(mask)
    same = MMAMask(mod, seg, policy=[(1, 0), (2, 1)], group_ids=torch.zeros_like(mod), group_policy=[(0, 2)])
    assert torch.equal(mask.to_dense(), same.to_dense())
    attn = MMAttention(policy=(p for p in [(1, 0)]))
    assert attn.policy == frozenset({(1, 0)}) and "pairs[(1, 0)]" in repr(attn)
    assert math.isclose(MMAttention(scale=np.float32(0.5)).scale, 0.5)
