"""`MMAttention`: the drop-in attention core as a `torch.nn.Module`, for any PyTorch model."""
from __future__ import annotations

from typing import Optional

import torch

from .attention import mma_attention
from .mask import MMAMask
from .policy import PolicyLike, describe, policy_bits


class MMAttention(torch.nn.Module):
    """Modality-mutual attention core: ``(q, k, v, mask) -> out``, no parameters.

    Args:
        scale: softmax scale (default ``head_dim ** -0.5``).
        policy: the look-ahead policy used when the mask is given as ids (see `MMAMask`).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see `mma_attention`).

    ``forward(q, k, v, mask=None, *, modality_ids=None, segment_ids=None, document_ids=None)``:
    q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D]; ``mask`` an `MMAMask` over the Lk keys (build it once
    and share it between layers), or the ids, from which one is built with this module's policy.
    Returns [B, Hq, Lq, D]. Compiles without a graph break when given an `MMAMask`.
    """

    def __init__(self, scale: Optional[float] = None, policy: PolicyLike = "mma", backend: str = "auto"):
        super().__init__()
        if scale is not None and not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
            raise ValueError(f"scale: expected a positive float or None, got {scale!r}")
        policy_bits(policy)
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"backend: expected 'auto', 'triton' or 'torch', got {backend!r}")
        self.scale, self.policy, self.backend = scale, policy, backend

    def extra_repr(self) -> str:
        return f"scale={self.scale}, policy={describe(self.policy)}, backend={self.backend}"

    def build_mask(self, modality_ids, segment_ids=None, document_ids=None) -> MMAMask:
        return MMAMask(modality_ids, segment_ids, document_ids, policy=self.policy)

    def forward(self, q, k, v, mask: Optional[MMAMask] = None, *, modality_ids=None, segment_ids=None,
                document_ids=None, return_lse: bool = False):
        if mask is None:
            if modality_ids is None:
                raise ValueError("mask: pass an MMAMask or modality_ids (with optional segment_ids/document_ids)")
            mask = self.build_mask(modality_ids, segment_ids, document_ids)
        elif modality_ids is not None or segment_ids is not None or document_ids is not None:
            raise ValueError("mask: pass either an MMAMask or the ids, not both")
        elif not isinstance(mask, MMAMask):
            raise TypeError(f"mask: expected an MMAMask, got {type(mask).__name__}")
        elif mask.policy is not None and describe(mask.policy) != describe(self.policy):
            raise ValueError(f"mask: built with policy {describe(mask.policy)}, but this MMAttention has policy "
                             f"{describe(self.policy)}")
        return mma_attention(q, k, v, mask, scale=self.scale, return_lse=return_lse, backend=self.backend)
