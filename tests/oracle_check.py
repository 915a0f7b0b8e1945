"""Run the op on a fuzz case (tests/fuzz_cases.py) and check it against the fp64 oracle (tests/oracle.py).

Shared by the fuzz suite and by the targeted tests that need the independent oracle.
"""
from __future__ import annotations

import torch

import oracle
from fuzz_cases import oracle_policy, user_policy
from helpers import assert_rule, plain_attention
from mma_kernels import MMAMask, mma_attention


def make_inputs(case, poison=False):
    """q, k, v (leaf tensors), dout, dlse (or None). With `poison`, padding query rows of q and
    padding key rows of k/v hold NaN, +-inf and huge values instead of random numbers."""
    g = torch.Generator().manual_seed(case["seed"])
    B, Hq, Hkv, Lq, Lk, D, dtype = (case[x] for x in ("B", "Hq", "Hkv", "Lq", "Lk", "D", "dtype"))
    q = torch.randn(B, Hq, Lq, D, generator=g)
    k = torch.randn(B, Hkv, Lk, D, generator=g)
    v = torch.randn(B, Hkv, Lk, D, generator=g)
    dout = torch.randn(B, Hq, Lq, D, generator=g).to(dtype)
    dlse = torch.randn(B, Hq, Lq, generator=g) if case.get("with_lse", case["seed"] % 2) else None
    if poison:
        junk = torch.tensor([float("nan"), float("inf"), float("-inf"), 3e38])
        pad = case["mod"] == -1
        for t, rows in ((q, pad[:, Lk - Lq:]), (k, pad), (v, pad)):
            sel = rows[:, None, :, None].expand_as(t)
            t[sel] = junk[torch.randint(0, 4, (int(sel.sum()),), generator=g)]
    return [t.to(dtype).requires_grad_() for t in (q, k, v)] + [dout, dlse]


def run_op(case, backend, q, k, v, dout, dlse, op=mma_attention):
    mask = MMAMask(case["mod"], case["seg"], case["doc"], policy=user_policy(case["policy"]), group_ids=case["grp"],
                   group_policy=user_policy(case["group_policy"]))
    out, lse = op(q, k, v, mask, scale=case["scale"], return_lse=True, backend=backend, window=case["window"])
    outs, grads = (out, lse) if dlse is not None else (out,), (dout, dlse) if dlse is not None else (dout,)
    dq, dk, dv = torch.autograd.grad(outs, (q, k, v), grads)
    return out.detach(), lse.detach(), dq, dk, dv


def scale_of(case):
    return case["D"] ** -0.5 if case["scale"] is None else float(case["scale"])


def plain_yardstick(q, k, v, ok, scale, dout, dlse):
    """Plain PyTorch attention in the inputs' dtype (the flash-attn rule's yardstick), with its gradients.
    Rows with no allowed key are given every key (finite numbers) and zero upstream gradient, then
    reported as out 0 / lse -inf: they contribute nothing, and no 0 * NaN enters the yardstick."""
    row = ok.any(-1)[:, None]  # [B, 1, Lq]
    qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = plain_attention(qp, kp, vp, ok | ~ok.any(-1, keepdim=True), scale)
    loss = (out.float() * (dout.float() * row[..., None])).sum()
    if dlse is not None:
        loss = loss + (lse * dlse * row).sum()
    grads = torch.autograd.grad(loss, (qp, kp, vp))
    out = torch.where(row[..., None], out.detach(), 0.0)
    lse = torch.where(row, lse.detach(), float("-inf"))
    return (out, lse, *grads)


def check_against_oracle(case, backend, op=mma_attention):
    """`op` is `mma_attention` or a wrapper of it with the same signature (e.g. compiled)."""
    q, k, v, dout, dlse = make_inputs(case)
    got = run_op(case, backend, q, k, v, dout, dlse, op)
    ok = oracle.allowed(case["mod"], case["seg"], case["doc"], oracle_policy(case["policy"]), q_len=case["Lq"],
                        grp=case["grp"], group_policy=oracle_policy(case["group_policy"]), window=case["window"])
    ref = oracle.attention64_with_grads(q, k, v, ok, scale_of(case), dout, dlse)
    plain = plain_yardstick(q, k, v, ok, scale_of(case), dout, dlse)
    for what, a, r, p in zip(("out", "lse", "dq", "dk", "dv"), got, ref, plain):
        assert_rule(what, a, r, p, case["dtype"])
    # exact properties of padding
    B, Hq, Hkv, Lq, Lk = (case[x] for x in ("B", "Hq", "Hkv", "Lq", "Lk"))
    out, lse, dq, dk, dv = got
    pad_q = (case["mod"][:, Lk - Lq:] == -1)[:, None].expand(B, Hq, Lq)
    pad_k = (case["mod"] == -1)[:, None].expand(B, Hkv, Lk)
    assert (out[pad_q] == 0).all() and (dq[pad_q] == 0).all(), "padding query rows: out and dq must be exactly 0"
    assert torch.isneginf(lse[pad_q]).all() and torch.isfinite(lse[~pad_q]).all()
    assert (dk[pad_k] == 0).all() and (dv[pad_k] == 0).all(), "padding keys: dk and dv must be exactly 0"


def check_padding_isolation(case, backend):
    """NaN/inf/huge values at padding keys (k, v) and padding queries (q) reach no output, lse or
    gradient: results are bitwise those of the same case with random finite numbers there."""
    clean = run_op(case, backend, *make_inputs(case))
    dirty = run_op(case, backend, *make_inputs(case, poison=True))
    for what, a, b in zip(("out", "lse", "dq", "dk", "dv"), clean, dirty):
        assert torch.equal(a, b), f"{what}: poisoned padding changes the result"


def check_deterministic(case, backend):
    first = run_op(case, backend, *make_inputs(case))
    second = run_op(case, backend, *make_inputs(case))
    for what, a, b in zip(("out", "lse", "dq", "dk", "dv"), first, second):
        assert torch.equal(a, b), f"{what}: two runs differ"
