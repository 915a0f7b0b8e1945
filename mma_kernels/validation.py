"""All input checks, in one place, run before any kernel launch.

Every error names the argument and the offending value.
"""
from __future__ import annotations

from typing import Optional

import torch

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_int_tensor(name: str, t, shape=None, device=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of integers, got {type(t).__name__}")
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"{name}: expected an integer dtype, got {t.dtype}")
    if shape is None:
        if t.dim() != 2:
            raise ValueError(f"{name}: expected shape [B, Lk], got {tuple(t.shape)}")
    elif tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (same as modality_ids), got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on device {t.device}, but modality_ids is on {device}")


def check_ids(modality_ids, segment_ids, document_ids, full: bool = True) -> None:
    """Types, shapes, devices and modality range of the ids. Run-contiguity is checked in MMAMask."""
    from .policy import MAX_MODALITY

    _check_int_tensor("modality_ids", modality_ids)
    if modality_ids.shape[1] == 0:
        raise ValueError("modality_ids: sequence length is 0")
    for name, t in (("segment_ids", segment_ids), ("document_ids", document_ids)):
        if t is not None:
            _check_int_tensor(name, t, modality_ids.shape, modality_ids.device)
    if full and modality_ids.numel():
        lo, hi = torch.aminmax(modality_ids.long())
        lo, hi = int(lo), int(hi)
        if lo < -1:
            raise ValueError(f"modality_ids: values must be >= -1 (-1 = padding), got {lo}")
        if hi > MAX_MODALITY:
            raise ValueError(f"modality_ids: values must be <= {MAX_MODALITY}, got {hi}")


def _check_qkv_tensor(name: str, t, dtypes) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name}: expected rank 4 [B, H, L, D], got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: dtype {t.dtype} is not supported; use float16, bfloat16 or float32")


def check_attention_inputs(q, k, v, mask, scale, dtypes=SUPPORTED_DTYPES) -> None:
    """Shapes, dtypes, devices of q/k/v against each other and against the mask."""
    from .mask import MMAMask

    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_qkv_tensor(name, t, dtypes)
    if not isinstance(mask, MMAMask):
        raise TypeError(f"mask: expected an MMAMask, got {type(mask).__name__}")
    B, Hq, Lq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k, v: shapes differ, k {tuple(k.shape)} vs v {tuple(v.shape)}")
    Bk, Hkv, Lk, Dk = k.shape
    if Bk != B:
        raise ValueError(f"k: batch size {Bk} differs from q's {B}")
    if Dk != D:
        raise ValueError(f"k: head dim {Dk} differs from q's {D}")
    if not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        raise ValueError(f"q: head dim {D} is out of range {MIN_HEAD_DIM}..{MAX_HEAD_DIM}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"k: number of key/value heads {Hkv} must divide the number of query heads {Hq}")
    if Lq > Lk:
        raise ValueError(f"q: query length {Lq} exceeds key length {Lk} (Lq <= Lk is required)")
    if Lq == 0:
        raise ValueError("q: query length is 0")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} differs from q's {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: device {t.device} differs from q's {q.device}")
    if mask.device != q.device:
        raise ValueError(f"mask: built on device {mask.device}, but q is on {q.device}")
    if mask.batch_size != B:
        raise ValueError(f"mask: batch size {mask.batch_size} differs from q's {B}")
    if mask.seq_len != Lk:
        raise ValueError(f"mask: covers {mask.seq_len} positions, but k has Lk={Lk}")
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale: expected a positive float or None, got {scale!r}")


def resolve_scale(scale: Optional[float], head_dim: int) -> float:
    return float(scale) if scale is not None else head_dim ** -0.5
