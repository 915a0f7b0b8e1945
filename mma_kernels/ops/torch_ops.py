"""PyTorch implementation of the contract, chunked over queries (the CPU path).

Forward keeps the output, the log-sum-exp and the row statistics (max and 1/sum); backward
recomputes scores one query chunk at a time, FlashAttention-style, with p = exp(s - max) / sum and
delta = sum(p * dp) as softmax's backward computes them (not exp(s - lse) and rowsum(dO * O),
whose roundings grow with |lse| and cancel badly when one key dominates). A chunk holds every key
its rows may see, so this costs no extra pass. Peak extra memory is one chunk of scores,
about ``B * Hq * chunk * Lk * 4`` bytes per temporary (the chunk is sized to keep that near 16 MiB),
never the full [Lq, Lk] matrix. Each chunk only visits the keys its queries can see.
"""
from __future__ import annotations

import torch

from ..mask import DOC, KV_HI, KV_LO, WIN_KV_LO, MMAMask

_CHUNK_ELEMS = 1 << 22


def _query_positions(mask: MMAMask, Lq: int, Lk: int, q_pos=None) -> torch.Tensor:
    """Absolute positions of the query rows: `q_pos` (LongTensor [Lq], any positions), else the last Lq."""
    if q_pos is not None:
        return q_pos
    return torch.arange(Lk - Lq, Lk, device=mask.device)


def _chunks(mask: MMAMask, B: int, Hq: int, Lq: int, Lk: int, win=None, window=None, q_pos=None):
    size = max(16, min(Lq, _CHUNK_ELEMS // max(1, B * Hq * Lk)))
    pos = _query_positions(mask, Lq, Lk, q_pos)
    lo_all = (mask.meta[:, KV_LO] if win is None else win[:, WIN_KV_LO]).index_select(1, pos)
    hi_all = mask.meta[:, KV_HI].index_select(1, pos)
    for r0 in range(0, Lq, size):
        r1 = min(Lq, r0 + size)
        k0 = int(lo_all[:, r0:r1].min())
        k1 = int(hi_all[:, r0:r1].max()) + 1
        if k1 <= k0:  # only padding queries in this chunk
            yield r0, r1, None
            continue
        rows = pos[r0:r1]
        cols = torch.arange(k0, k1, device=mask.device)
        yield r0, r1, (k0, k1, mask.block(rows, cols, window)[:, None, None])  # [B, 1, 1, R, C]


def _grouped(x: torch.Tensor, Hkv: int) -> torch.Tensor:
    B, H, L, D = x.shape
    return x.reshape(B, Hkv, H // Hkv, L, D)


def _inert(x: torch.Tensor, mask: MMAMask, first, pos=None) -> torch.Tensor:
    """x [B, Hkv, G, L, D] (positions first..Lk-1, or the positions `pos`) with padding positions zeroed:
    padding K/V, q or dO (NaN, inf, garbage) never reaches an output, lse or gradient."""
    valid = (mask.meta[:, DOC, first:] if pos is None else mask.meta[:, DOC].index_select(1, pos)) >= 0
    return torch.where(valid[:, None, None, :, None], x, 0.0)


def check_no_double_backward(backend: str) -> None:
    """Backward is not differentiable: with create_graph=True say so instead of returning graph-less grads."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"mma_attention: double backward (create_graph=True) is not supported by the {backend!r} backend; "
            f"its gradients are computed by a fused backward that is not itself differentiable"
        )


class TorchMMAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale, win=None, window=None, q_pos=None):
        """`q_pos`: optional LongTensor [Lq], the absolute positions of the query rows (any, e.g. a
        sequence-parallel shard's); default the last Lq positions (bottom-right alignment)."""
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        ctx.mask, ctx.scale, ctx.window = mask, scale, window
        ctx.q_pos = q_pos
        if q.numel() == 0:  # empty batch or no heads
            out = torch.zeros_like(q)
            lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
            ctx.save_for_backward(q, k, v, out, lse, win, None)
            return out, lse
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        qg = _inert(_grouped(q, Hkv).to(cdt), mask, Lk - Lq, q_pos)  # [B, Hkv, G, Lq, D]
        kf, vf = (_inert(t.to(cdt)[:, :, None], mask, 0) for t in (k, v))  # [B, Hkv, 1, Lk, D]
        out = torch.zeros_like(qg)
        lse = torch.full(qg.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        stats = torch.zeros((2,) + qg.shape[:-1], dtype=cdt, device=q.device)  # row max, 1/sum (0: no key)
        for r0, r1, blk in _chunks(mask, B, Hq, Lq, Lk, win, window, q_pos):
            if blk is None:
                continue
            k0, k1, allowed = blk
            s = torch.matmul(qg[..., r0:r1, :], kf[..., k0:k1, :].transpose(-1, -2)) * scale
            s = s.masked_fill(~allowed, float("-inf"))
            m = s.amax(dim=-1)
            m = torch.where(torch.isinf(m), 0.0, m)
            e = torch.exp(s - m[..., None])
            l = e.sum(dim=-1)
            linv = torch.where(l > 0, 1.0 / l, 0.0)
            out[..., r0:r1, :] = torch.matmul(e * linv[..., None], vf[..., k0:k1, :])
            lse[..., r0:r1] = torch.where(l > 0, m + torch.log(l), float("-inf")).float()
            stats[0, ..., r0:r1], stats[1, ..., r0:r1] = m, linv
        out = out.reshape(B, Hq, Lq, D).to(q.dtype)
        lse = lse.reshape(B, Hq, Lq)
        ctx.save_for_backward(q, k, v, out, lse, win, stats)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        check_no_double_backward("torch")
        q, k, v, out, lse, win, stats = ctx.saved_tensors
        mask, scale, window = ctx.mask, ctx.scale, ctx.window
        q_pos = getattr(ctx, "q_pos", None)
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        if q.numel() == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None, None, None, None
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        qg = _inert(_grouped(q, Hkv).to(cdt), mask, Lk - Lq, q_pos)
        dog = _inert(_grouped(dout, Hkv).to(cdt), mask, Lk - Lq, q_pos)
        mrow, linv = stats.reshape(2, B, Hkv, Hq // Hkv, Lq).to(cdt).unbind(0)
        # d lse / d s = p: the lse gradient enters as -dlse in delta (0 on padding rows, whatever dlse holds)
        dlse_g = torch.zeros_like(linv) if dlse is None else torch.where(linv == 0, 0.0, dlse.reshape(linv.shape).to(cdt))
        kf, vf = (_inert(t.to(cdt)[:, :, None], mask, 0) for t in (k, v))
        dq = torch.zeros_like(qg)
        dk = torch.zeros_like(kf.expand(-1, -1, Hq // Hkv, -1, -1))
        dv = torch.zeros_like(dk)
        for r0, r1, blk in _chunks(mask, B, Hq, Lq, Lk, win, window, q_pos):
            if blk is None:
                continue
            k0, k1, allowed = blk
            kc, vc = kf[..., k0:k1, :], vf[..., k0:k1, :]
            qc, doc = qg[..., r0:r1, :], dog[..., r0:r1, :]
            s = torch.matmul(qc, kc.transpose(-1, -2)) * scale
            e = torch.exp(s - mrow[..., r0:r1, None])
            p = torch.where(allowed, e * linv[..., r0:r1, None], 0.0)
            dv[..., k0:k1, :] += torch.matmul(p.transpose(-1, -2), doc)
            dp = torch.matmul(doc, vc.transpose(-1, -2))
            # delta = sum_j p dp from the same p and dp (as softmax's backward), not rowsum(dO * O): it
            # cancels in dp - delta when one key dominates, so its rounding must match dp's
            delta = (p * dp).sum(-1, keepdim=True) - dlse_g[..., r0:r1, None]
            ds = p * (dp - delta)
            dq[..., r0:r1, :] += torch.matmul(ds, kc) * scale
            dk[..., k0:k1, :] += torch.matmul(ds.transpose(-1, -2), qc) * scale
        dq = dq.reshape(B, Hq, Lq, D).to(q.dtype)
        return dq, dk.sum(2).to(k.dtype), dv.sum(2).to(v.dtype), None, None, None, None, None
