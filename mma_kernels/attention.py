"""`mma_attention`: the public op. Validates, then dispatches to Triton (CUDA) or PyTorch (CPU)."""
from __future__ import annotations

from typing import Optional

import torch

from .mask import MMAMask
from .validation import check_attention_inputs, check_query_positions, resolve_scale

BACKENDS = ("auto", "triton", "torch", "flex")


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda":
        from .ops.triton_ops import interpreting

        if not interpreting():
            raise ValueError(
                f"backend: 'triton' needs CUDA tensors (got device {device}), or TRITON_INTERPRET=1 "
                f"set before triton is imported to run the kernels on CPU through the interpreter"
            )
    return backend


def mma_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: MMAMask,
    scale: Optional[float] = None,
    return_lse: bool = False,
    backend: str = "auto",
    window: Optional[int] = None,
):
    """Modality-mutual attention, fused: the mask is computed inside the kernel from `mask`'s ids.

    Args:
        q: [B, Hq, Lq, D] (the layout of `scaled_dot_product_attention`; views are fine).
        k, v: [B, Hkv, Lk, D], ``Hq % Hkv == 0`` (GQA/MQA), ``Lq <= Lk``: query row ``r``
            sits at absolute position ``Lk - Lq + r`` (KV cache, chunked prefill).
        mask: an `MMAMask` over the ``Lk`` key positions, built once per batch.
        scale: softmax scale, default ``D ** -0.5``.
        return_lse: also return the log-sum-exp of the scores, float32 [B, Hq, Lq] (natural
            log; -inf for padding queries).
        backend: ``"auto"`` (Triton on CUDA, PyTorch on CPU), ``"triton"`` (CUDA, or CPU
            under ``TRITON_INTERPRET=1``), ``"torch"`` (any device, chunked, O(chunk * Lk) memory),
            ``"flex"`` (FlexAttention with a BlockMask built from the mask's fields; compiled on
            CUDA, eager and forward-only on CPU).
        window: sliding window (int >= 1) for the causal part, Hugging Face semantics: a query at
            position ``i`` sees the earlier keys ``j`` with ``i - j < window``; look-ahead and group
            keys are not cut. ``None`` (default): no window. Per-window bounds are derived once and
            cached on the mask, so layers sharing a window share them.

    Returns:
        out [B, Hq, Lq, D] in q's dtype (and lse). Padding queries give 0 and zero gradients.
        Differentiable with respect to q, k, v (and through lse).

    Precision: fp16/bf16 inputs accumulate in fp32; fp32 inputs use IEEE fp32 dots (no TF32).
    """
    check_attention_inputs(q, k, v, mask, scale, window=window)
    scale = resolve_scale(scale, q.shape[-1])
    picked = _pick_backend(backend, q.device)
    window = mask.effective_window(window)
    if picked == "flex":  # FlexAttention with a BlockMask from the mask's fields (ops/flex_ops.py)
        from .ops.flex_ops import flex_mma_attention

        out, lse = flex_mma_attention(q, k, v, mask, scale, window)
        return (out, lse) if return_lse else out
    win = mask.window_fields(window) if window is not None else None
    if torch.compiler.is_compiling():
        # under torch.compile: the torch.library op (fake impl + autograd), so no graph break here
        from .ops.library import mma_attention_op

        out, lse = mma_attention_op(q, k, v, mask, scale, picked, win, window)
        return (out, lse) if return_lse else out
    if picked == "triton":
        from .ops.triton_ops import TritonMMAttention as Fn
    else:
        from .ops.torch_ops import TorchMMAttention as Fn
    out, lse = Fn.apply(q, k, v, mask, scale, win, window)
    return (out, lse) if return_lse else out


def mma_attention_at(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: MMAMask,
    q_positions: torch.Tensor,
    scale: Optional[float] = None,
    return_lse: bool = False,
    backend: str = "auto",
    window: Optional[int] = None,
):
    """`mma_attention` for query rows at arbitrary absolute positions (a context-parallel query shard).

    Same as `mma_attention`, except that query row ``r`` sits at absolute position ``q_positions[r]``
    (an integer tensor [Lq], strictly increasing, in ``0..Lk-1``, on q's device) instead of
    ``Lk - Lq + r``. The rule, padding, GQA, groups and windows are unchanged: row ``r`` gets exactly
    the output, lse and gradients it would get as row ``q_positions[r]`` of the whole-row call.
    Backends ``"torch"`` and ``"triton"`` (not ``"flex"``); not traced by ``torch.compile``.
    """
    check_attention_inputs(q, k, v, mask, scale, window=window)
    check_query_positions(q_positions, q.shape[2], k.shape[2], q.device)
    scale = resolve_scale(scale, q.shape[-1])
    picked = _pick_backend(backend, q.device)
    if picked == "flex":
        raise ValueError("backend: 'flex' does not take q_positions; use 'torch' or 'triton' (or 'auto')")
    window = mask.effective_window(window)
    win = mask.window_fields(window) if window is not None else None
    if picked == "triton":
        from .ops.triton_ops import TritonMMAttention as Fn
    else:
        from .ops.torch_ops import TorchMMAttention as Fn
    out, lse = Fn.apply(q, k, v, mask, scale, win, window, q_positions.long())
    return (out, lse) if return_lse else out
