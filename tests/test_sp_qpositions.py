"""`mma_attention_at`: query rows at arbitrary absolute positions (the context-parallel kernels' argument),
against the fp64 oracle, on the torch path and the Triton kernels (interpreter without a GPU)."""
import pytest
import torch

from helpers import assert_rule, make_layout, make_qkv, plain_attention
from oracle import allowed, attention64_with_grads

from mma_kernels import MMAMask
from mma_kernels.attention import mma_attention_at

CASES = [  # (layout, B, Hq, Hkv, L, positions kind, window, groups)
    ("packed", 2, 2, 1, 48, "scattered", None, False),
    ("right_pad", 2, 2, 2, 40, "chunks", 7, False),
    ("multi_image", 1, 4, 2, 64, "scattered", None, True),
    ("two_docs", 1, 2, 1, 96, "chunks", None, False),
    ("left_pad", 2, 2, 1, 36, "tail", None, False),
]


def _ids(name, B, L):
    if name == "two_docs":  # two long documents, images with look-ahead: fully allowed tiles for far rows
        mod, seg, doc = make_layout("multi_image", B, L // 2, seed=5)
        return (torch.cat([mod, mod], 1), torch.cat([seg, seg + 100], 1),
                torch.cat([torch.zeros_like(doc), torch.ones_like(doc)], 1))
    return make_layout(name, B, L, seed=3)


def _positions(kind, L, g):
    if kind == "tail":  # the last rows: the plain bottom-right case
        return torch.arange(L - 13, L)
    if kind == "chunks":  # chunks, as a balanced plan's shard
        if L >= 96:
            return torch.cat([torch.arange(5, 21), torch.arange(40, 72), torch.arange(L - 17, L - 1)])
        return torch.cat([torch.arange(3, 11), torch.arange(L - 9, L - 2)])
    return torch.randperm(L, generator=g)[: L // 3].sort().values


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[5]}" for c in CASES])
def test_q_positions_match_oracle(backend, case, monkeypatch):
    name, B, Hq, Hkv, L, kind, window, groups = case
    if backend == "triton":  # small tiles: several row and key blocks, fully allowed tiles among them
        from mma_kernels.ops import triton_ops

        monkeypatch.setattr(triton_ops, "INTERPRET_BLOCKS", {k: (16, 16) for k in ("fwd", "dq", "dkdv")})
        if kind == "chunks":  # dK/dV's masked tiles shorter than its row tile (`triton_ops.MASKED_M`)
            monkeypatch.setattr(triton_ops, "INTERPRET_BLOCKS", {"fwd": (16, 16), "dq": (16, 16), "dkdv": (32, 16)})
            monkeypatch.setattr(triton_ops, "MASKED_M", 16)
    g = torch.Generator().manual_seed(L)
    mod, seg, doc = _ids(name, B, L)
    grp = None
    if groups:  # one group per image run (Gemma 3 style), every other token its own group
        grp = torch.arange(L).expand(B, L).clone()
        img = mod == 1
        start = img & ~torch.cat([torch.zeros(B, 1, dtype=torch.bool), img[:, :-1]], 1)
        run = start.long().cumsum(1)
        grp = torch.where(img, -run, grp)
    mask = MMAMask(mod, seg, doc, policy="mma", group_ids=grp)
    pos = _positions(kind, L, g)
    Lq, D = len(pos), 32
    scale = D ** -0.5  # at 0.5 (sharper), Triton dv on case 1 exceeds the bound by 1.7x on the default path too
    q, k, v = make_qkv(B, Hq, Hkv, Lq, L, D, torch.float32, seed=L)
    dout = torch.randn(B, Hq, Lq, D, generator=g)
    dlse = torch.randn(B, Hq, Lq, generator=g)
    out, lse = mma_attention_at(q, k, v, mask, pos, scale=scale, return_lse=True, backend=backend, window=window)
    valid = torch.isfinite(lse)
    ((out * dout).sum() + torch.where(valid, lse * dlse, 0.0).sum()).backward()
    ok = allowed(mod, seg, doc, "mma", grp=grp, window=window)[:, pos]
    r_out, r_lse, r_dq, r_dk, r_dv = attention64_with_grads(q, k, v, ok, scale, dout, dlse)
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    p_out, p_lse = plain_attention(qp, kp, vp, ok, scale)
    ((p_out * dout).sum() + torch.where(torch.isfinite(p_lse), p_lse * dlse, 0.0).sum()).backward()
    assert_rule("out", out.detach(), r_out, p_out.detach(), torch.float32)
    assert_rule("lse", lse.detach(), r_lse, p_lse.detach(), torch.float32)
    assert_rule("dq", q.grad, r_dq, qp.grad, torch.float32)
    assert_rule("dk", k.grad, r_dk, kp.grad, torch.float32)
    assert_rule("dv", v.grad, r_dv, vp.grad, torch.float32)


def test_q_positions_bad_input():
    mod, seg, doc = make_layout("packed", 1, 16)
    mask = MMAMask(mod, seg, doc)
    q, k, v = make_qkv(1, 2, 2, 4, 16, 16, torch.float32)
    for bad, what in ((torch.tensor([3, 2, 5, 6]), "strictly increasing"), (torch.tensor([0, 1, 2, 16]), "0..15"),
                      (torch.tensor([0, 1, 2]), "shape"), (torch.tensor([0.0, 1, 2, 3]), "integer")):
        with pytest.raises((ValueError, TypeError), match="q_positions"):
            mma_attention_at(q, k, v, mask, bad, backend="torch")
    with pytest.raises(ValueError, match="flex"):
        mma_attention_at(q, k, v, mask, torch.arange(4), backend="flex")
