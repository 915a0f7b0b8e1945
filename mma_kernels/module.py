"""`MMAttention`: the drop-in attention core as a `torch.nn.Module`, for any PyTorch model."""
from __future__ import annotations

from typing import Optional

import torch

from .attention import mma_attention
from .mask import MMAMask
from .policy import PolicyLike, describe, normalize_policy
from .validation import check_scale, check_window


class MMAttention(torch.nn.Module):
    """Modality-mutual attention core: ``(q, k, v, mask) -> out``, no parameters.

    Args:
        scale: softmax scale (default ``head_dim ** -0.5``).
        policy: the look-ahead policy used when the mask is given as ids (see `MMAMask`).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see `mma_attention`).
        window: this layer's sliding window (int >= 1, Hugging Face semantics; see `mma_attention`),
            or None. One mask serves layers with different windows.
        group_policy: the group level's policy, used when the mask is given as ids with ``group_ids``.

    ``forward(q, k, v, mask=None, *, modality_ids=None, segment_ids=None, document_ids=None, group_ids=None)``:
    q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D]; ``mask`` an `MMAMask` over the Lk keys (build it once
    and share it between layers), or the ids, from which one is built with this module's policies.
    Returns [B, Hq, Lq, D]. Compiles without a graph break when given an `MMAMask`.
    """

    def __init__(self, scale: Optional[float] = None, policy: PolicyLike = "mma", backend: str = "auto",
                 window: Optional[int] = None, group_policy: PolicyLike = "bidirectional_image"):
        super().__init__()
        scale = check_scale(scale)
        check_window(window)
        policy = normalize_policy(policy, "policy")
        group_policy = normalize_policy(group_policy, "group_policy")
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"backend: expected 'auto', 'triton' or 'torch', got {backend!r}")
        self.scale, self.policy, self.backend, self.window = scale, policy, backend, window
        self.group_policy = group_policy

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, policy={describe(self.policy)}, backend={self.backend}, window={self.window}, "
                f"group_policy={describe(self.group_policy)}")

    def build_mask(self, modality_ids, segment_ids=None, document_ids=None, group_ids=None) -> MMAMask:
        return MMAMask(modality_ids, segment_ids, document_ids, policy=self.policy, group_ids=group_ids,
                       group_policy=self.group_policy)

    def forward(self, q, k, v, mask: Optional[MMAMask] = None, *, modality_ids=None, segment_ids=None,
                document_ids=None, group_ids=None, return_lse: bool = False):
        ids_given = any(t is not None for t in (modality_ids, segment_ids, document_ids, group_ids))
        if mask is None:
            if modality_ids is None:
                raise ValueError("mask: pass an MMAMask or modality_ids (with optional segment_ids/document_ids)")
            mask = self.build_mask(modality_ids, segment_ids, document_ids, group_ids)
        elif ids_given:
            raise ValueError("mask: pass either an MMAMask or the ids, not both")
        elif not isinstance(mask, MMAMask):
            raise TypeError(f"mask: expected an MMAMask, got {type(mask).__name__}")
        elif mask.policy is not None and describe(mask.policy) != describe(self.policy):
            raise ValueError(f"mask: built with policy {describe(mask.policy)}, but this MMAttention has policy "
                             f"{describe(self.policy)}")
        elif mask.has_groups and mask.group_policy is not None and describe(mask.group_policy) != describe(self.group_policy):
            raise ValueError(f"mask: built with group_policy {describe(mask.group_policy)}, but this MMAttention has "
                             f"group_policy {describe(self.group_policy)}")
        return mma_attention(q, k, v, mask, scale=self.scale, return_lse=return_lse, backend=self.backend,
                             window=self.window)
