"""PyTorch implementation of the contract, chunked over queries (the CPU path).

Forward keeps only the output and the log-sum-exp; backward recomputes scores one query
chunk at a time, FlashAttention-style. Peak extra memory is one chunk of scores,
about ``B * Hq * chunk * Lk * 4`` bytes per temporary (the chunk is sized to keep that near 16 MiB),
never the full [Lq, Lk] matrix. Each chunk only visits the keys its queries can see.
"""
from __future__ import annotations

import torch

from ..mask import KV_HI, KV_LO, WIN_KV_LO, MMAMask

_CHUNK_ELEMS = 1 << 22


def _chunks(mask: MMAMask, B: int, Hq: int, Lq: int, Lk: int, win=None, window=None):
    off = Lk - Lq
    size = max(16, min(Lq, _CHUNK_ELEMS // max(1, B * Hq * Lk)))
    lo_all = (mask.meta[:, KV_LO] if win is None else win[:, WIN_KV_LO])[:, off:]
    hi_all = mask.meta[:, KV_HI, off:]
    for r0 in range(0, Lq, size):
        r1 = min(Lq, r0 + size)
        k0 = int(lo_all[:, r0:r1].min())
        k1 = int(hi_all[:, r0:r1].max()) + 1
        if k1 <= k0:  # only padding queries in this chunk
            yield r0, r1, None
            continue
        rows = torch.arange(off + r0, off + r1, device=mask.device)
        cols = torch.arange(k0, k1, device=mask.device)
        yield r0, r1, (k0, k1, mask.block(rows, cols, window)[:, None, None])  # [B, 1, 1, R, C]


def _grouped(x: torch.Tensor, Hkv: int) -> torch.Tensor:
    B, H, L, D = x.shape
    return x.reshape(B, Hkv, H // Hkv, L, D)


class TorchMMAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale, win=None, window=None):
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        ctx.mask, ctx.scale, ctx.window = mask, scale, window
        if q.numel() == 0:  # empty batch or no heads
            out = torch.zeros_like(q)
            lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
            ctx.save_for_backward(q, k, v, out, lse, win)
            return out, lse
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        qg = _grouped(q, Hkv).to(cdt)  # [B, Hkv, G, Lq, D]
        kf, vf = k.to(cdt)[:, :, None], v.to(cdt)[:, :, None]  # [B, Hkv, 1, Lk, D]
        out = torch.zeros_like(qg)
        lse = torch.full(qg.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        for r0, r1, blk in _chunks(mask, B, Hq, Lq, Lk, win, window):
            if blk is None:
                continue
            k0, k1, allowed = blk
            s = torch.matmul(qg[..., r0:r1, :], kf[..., k0:k1, :].transpose(-1, -2)) * scale
            s = s.masked_fill(~allowed, float("-inf"))
            m = torch.logsumexp(s, dim=-1)
            m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
            p = torch.exp(s - m_safe[..., None])
            out[..., r0:r1, :] = torch.matmul(p, vf[..., k0:k1, :])
            lse[..., r0:r1] = m.float()
        out = out.reshape(B, Hq, Lq, D).to(q.dtype)
        lse = lse.reshape(B, Hq, Lq)
        ctx.save_for_backward(q, k, v, out, lse, win)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, win = ctx.saved_tensors
        mask, scale, window = ctx.mask, ctx.scale, ctx.window
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        if q.numel() == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None, None, None
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        qg = _grouped(q, Hkv).to(cdt)
        dog = _grouped(dout, Hkv).to(cdt)
        lseg = lse.reshape(B, Hkv, Hq // Hkv, Lq).to(cdt)
        delta = (dog * _grouped(out, Hkv).to(cdt)).sum(-1)
        if dlse is not None:  # lse is an output too: d lse / d s = p
            delta = delta - dlse.reshape(lseg.shape).to(cdt)
        kf, vf = k.to(cdt)[:, :, None], v.to(cdt)[:, :, None]
        dq = torch.zeros_like(qg)
        dk = torch.zeros_like(kf.expand(-1, -1, Hq // Hkv, -1, -1))
        dv = torch.zeros_like(dk)
        for r0, r1, blk in _chunks(mask, B, Hq, Lq, Lk, win, window):
            if blk is None:
                continue
            k0, k1, allowed = blk
            kc, vc = kf[..., k0:k1, :], vf[..., k0:k1, :]
            qc, doc = qg[..., r0:r1, :], dog[..., r0:r1, :]
            s = torch.matmul(qc, kc.transpose(-1, -2)) * scale
            lse_c = lseg[..., r0:r1, None]
            p = torch.where(allowed, torch.exp(s - torch.where(torch.isinf(lse_c), 0.0, lse_c)), 0.0)
            dv[..., k0:k1, :] += torch.matmul(p.transpose(-1, -2), doc)
            dp = torch.matmul(doc, vc.transpose(-1, -2))
            ds = p * (dp - delta[..., r0:r1, None])
            dq[..., r0:r1, :] += torch.matmul(ds, kc) * scale
            dk[..., k0:k1, :] += torch.matmul(ds.transpose(-1, -2), qc) * scale
        dq = dq.reshape(B, Hq, Lq, D).to(q.dtype)
        return dq, dk.sum(2).to(k.dtype), dv.sum(2).to(v.dtype), None, None, None, None
