"""Dense PyTorch reference of the contract: builds the [B, Lq, Lk] mask and runs plain softmax attention.

O(L^2) memory. For tests and debugging only; `mma_attention` is the op to use.
"""
from __future__ import annotations

from typing import Optional

import torch

from .mask import DOC, MMAMask
from .policy import policy_bits
from .validation import SUPPORTED_DTYPES, check_attention_inputs, resolve_scale


def mma_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: MMAMask,
    scale: Optional[float] = None,
    return_lse: bool = False,
    window: Optional[int] = None,
):
    """Same signature and results as `mma_attention`, in dense fp32 math (fp64 for fp64 inputs).

    Differentiable through autograd. Padding query rows give output 0 and lse -inf; whatever q/k/v
    (or the output's gradient) hold at padding positions never reaches a result or gradient.
    """
    check_attention_inputs(q, k, v, mask, scale, dtypes=SUPPORTED_DTYPES + (torch.float64,), window=window)
    p, lse, q_ok, key_ok = _probs(q, k, mask, scale, window)
    cdt = p.dtype
    vf = torch.where(key_ok, v.to(cdt), 0.0).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    out = torch.where(q_ok, torch.matmul(p, vf), 0.0).to(q.dtype)
    return (out, lse.float() if cdt == torch.float32 else lse) if return_lse else out


def mma_attention_weights(q: torch.Tensor, k: torch.Tensor, mask: MMAMask, scale: Optional[float] = None,
                          window: Optional[int] = None) -> torch.Tensor:
    """The attention probabilities [B, Hq, Lq, Lk] in q's dtype (0 where not allowed, rows of padding queries
    all 0), in dense fp32 math: what ``output_attentions=True`` returns. O(Lq * Lk) memory: for debugging."""
    check_attention_inputs(q, k, k, mask, scale, dtypes=SUPPORTED_DTYPES + (torch.float64,), window=window)
    p, _, q_ok, _ = _probs(q, k, mask, scale, window)
    return torch.where(q_ok, p, 0.0).to(q.dtype)


def _probs(q, k, mask, scale, window):
    """(probabilities [B, Hq, Lq, Lk] in fp32/fp64, lse [B, Hq, Lq], query-valid [B,1,Lq,1], key-valid [B,1,Lk,1])."""
    B, Hq, Lq, D = q.shape
    Hkv = k.shape[1]
    scale = resolve_scale(scale, D)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    allowed = mask.to_dense(Lq, window)[:, None]  # [B, 1, Lq, Lk]
    key_ok = (mask.field(DOC) >= 0)[:, None, :, None]  # padding is inert: zeroed before use
    q_ok = key_ok[:, :, mask.seq_len - Lq:]
    kf = torch.where(key_ok, k.to(cdt), 0.0).repeat_interleave(Hq // Hkv, dim=1)
    s = torch.matmul(torch.where(q_ok, q.to(cdt), 0.0), kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    lse_safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return torch.exp(s - lse_safe[..., None]), lse, q_ok, key_ok


def flex_mask_mod(
    modality_ids: torch.Tensor,
    segment_ids: Optional[torch.Tensor] = None,
    document_ids: Optional[torch.Tensor] = None,
    policy="mma",
    q_offset: int = 0,
    *,
    group_ids: Optional[torch.Tensor] = None,
    group_policy="bidirectional_image",
    window: Optional[int] = None,
):
    """A FlexAttention ``mask_mod`` implementing the contract straight from the raw ids.

    Independent of `MMAMask`'s derived fields, so it serves as a second reference
    (and as the `flex` benchmark provider). ``q_offset = Lk - Lq`` for short queries.
    """
    B, L = modality_ids.shape
    dev = modality_ids.device
    mod = modality_ids.long()
    own = torch.arange(L, device=dev).expand(B, L)
    seg = segment_ids.long() if segment_ids is not None else own
    doc = document_ids.long() if document_ids is not None else torch.zeros_like(mod)
    grp = group_ids.long() if group_ids is not None else own
    bits = policy_bits(policy).to(dev)
    gbits = policy_bits(group_policy, "group_policy").to(dev)

    def mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + q_offset
        mi, mj = mod[b, i].clamp(min=0), mod[b, kv_idx].clamp(min=0)
        ahead = (seg[b, i] == seg[b, kv_idx]) & (((bits[mi] >> mj) & 1) != 0)
        in_group = (grp[b, i] == grp[b, kv_idx]) & (((gbits[mi] >> mj) & 1) != 0)
        causal = kv_idx <= i
        if window is not None:
            causal = causal & (i - kv_idx < window)
        return ((mod[b, i] >= 0) & (mod[b, kv_idx] >= 0) & (doc[b, i] == doc[b, kv_idx])
                & (causal | ahead | in_group))

    return mask_mod
