"""``backend="flex"``: PyTorch's FlexAttention with the BlockMask built from the mask's O(L) fields.

`torch.compile(flex_attention)` on CUDA (forward and backward); eager `flex_attention` on CPU,
forward only (FlexAttention has no CPU backward; eager flex also evaluates the mask on every
pair, so CPU is for checking, not for speed). The BlockMask is built once per
(mask, q_len, block size, window) and reused by every layer (`mma_kernels.flex.cached_block_mask`).
"""
from __future__ import annotations

import warnings
import weakref
from typing import Optional

import torch

from ..flex import cached_block_mask
from ..mask import DOC, MMAMask

BLOCK_SIZE = 128
_compiled = None
_has_padding: "weakref.WeakKeyDictionary[MMAMask, bool]" = weakref.WeakKeyDictionary()


@torch.compiler.disable
def _padding_present(mask: MMAMask) -> bool:
    """Whether the mask has padding tokens (one host sync per mask, cached; not traced)."""
    if mask not in _has_padding:
        _has_padding[mask] = bool(mask.padcum[:, -1].any())
    return _has_padding[mask]


def _kernel(device: torch.device):
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled
    if device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention  # inside a compiled region Dynamo traces flex_attention itself
    if _compiled is None:
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def _call(fn, q, k, v, block_mask, scale, gqa):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        try:
            from torch.nn.attention.flex_attention import AuxRequest
        except ImportError:  # torch < 2.9: return_lse
            return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, return_lse=True)
        out, aux = fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, return_aux=AuxRequest(lse=True))
        return out, aux.lse


def flex_mma_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MMAMask, scale: float,
                       window: Optional[int] = None):
    """(out, lse) of the contract through FlexAttention. Inputs already validated by `mma_attention`;
    ``window`` limits causal keys to ``i - j < window`` (policy pairs inside a segment stay allowed)."""
    if q.numel() == 0 or k.numel() == 0:  # empty batch or no heads: nothing to launch, zero gradients
        B, Hq, Lq, _ = q.shape
        out = q.new_zeros(q.shape) + 0 * (q.sum() + k.sum() + v.sum())
        return out, torch.full((B, Hq, Lq), float("-inf"), dtype=torch.float32, device=q.device)
    if q.device.type != "cuda" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(
            f"backend: 'flex' has no backward on {q.device.type} (FlexAttention supports backward on CUDA only); "
            f"call it under torch.no_grad() or with tensors that do not require grad, or use backend='torch'"
        )
    if q.device.type != "cuda" and not torch.is_grad_enabled():
        q, k, v = q.detach(), k.detach(), v.detach()  # FlexAttention refuses CPU tensors requiring grad
    Lq, Lk = q.shape[2], k.shape[2]
    block_mask = cached_block_mask(mask, Lq, BLOCK_SIZE, window)  # validates window
    valid = mask.meta[:, DOC] >= 0  # [B, Lk]
    if _padding_present(mask):
        # padding keys are inert: whatever K/V hold there (NaN, inf) must not reach the output,
        # and a masked score times a NaN value is still NaN inside the kernel
        keep = valid[:, None, :, None]
        k = torch.where(keep, k, torch.zeros((), dtype=k.dtype, device=k.device))
        v = torch.where(keep, v, torch.zeros((), dtype=v.dtype, device=v.device))
    out, lse = _call(_kernel(q.device), q, k, v, block_mask, scale, q.shape[1] != k.shape[1])
    # padding queries: output 0 and lse -inf, whatever the kernel leaves in fully masked rows
    qvalid = valid[:, None, Lk - Lq:]
    out = torch.where(qvalid[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    lse = torch.where(qvalid, lse.float(), float("-inf"))
    return out, lse
