"""All input checks, in one place, run before any kernel launch.

Every error names the argument and the offending value.
"""
from __future__ import annotations

import math
import numbers
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
    if t.device.type == "meta":
        raise ValueError(f"{name}: is on the meta device (no values); the ids must be real tensors")
    if shape is None:
        if t.dim() != 2:
            raise ValueError(f"{name}: expected shape [B, Lk], got {tuple(t.shape)}")
    elif tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (same as modality_ids), got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on device {t.device}, but modality_ids is on {device}")


def check_ids(modality_ids, segment_ids, document_ids, full: bool = True, group_ids=None) -> None:
    """Types, shapes, devices and modality range of the ids. Run-contiguity is checked in MMAMask."""
    from .policy import MAX_MODALITY

    _check_int_tensor("modality_ids", modality_ids)
    if modality_ids.shape[1] == 0:
        raise ValueError("modality_ids: sequence length is 0")
    for name, t in (("segment_ids", segment_ids), ("document_ids", document_ids), ("group_ids", group_ids)):
        if t is not None:
            _check_int_tensor(name, t, modality_ids.shape, modality_ids.device)
    if full and modality_ids.numel():
        lo, hi = torch.aminmax(modality_ids.long())
        lo, hi = int(lo), int(hi)
        if lo < -1:
            raise ValueError(f"modality_ids: values must be >= -1 (-1 = padding), got {lo}")
        if hi > MAX_MODALITY:
            raise ValueError(f"modality_ids: values must be <= {MAX_MODALITY}, got {hi}")


def check_window(window) -> None:
    """A sliding window is None (no window) or an int >= 1 (Python or NumPy integer; bool rejected)."""
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"window: expected None or an int >= 1, got {type(window).__name__} {window!r}")
    if window < 1:
        raise ValueError(f"window: expected None or an int >= 1, got {window!r}")


def check_scale(scale) -> Optional[float]:
    """None, or a finite positive real: Python/NumPy number or 0-d real tensor (bool rejected)."""
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor):
        if scale.dim() != 0 or scale.dtype == torch.bool or scale.is_complex() or scale.device.type == "meta":
            raise TypeError(f"scale: expected a real number or a 0-d real tensor, got a tensor of shape "
                            f"{tuple(scale.shape)} and dtype {scale.dtype} on {scale.device}")
        value = float(scale)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        if type(scale).__name__ == "bool_":  # numpy.bool_ is not a numbers.Real, say so clearly
            raise TypeError(f"scale: expected a real number, got a bool {scale!r}")
        raise TypeError(f"scale: expected a real number, got {type(scale).__name__} {scale!r}")
    else:
        value = float(scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale: expected a finite positive number or None, got {scale!r}")
    return value


def _check_qkv_tensor(name: str, t, dtypes) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name}: expected rank 4 [B, H, L, D], got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: dtype {t.dtype} is not supported; use float16, bfloat16 or float32")


def check_attention_inputs(q, k, v, mask, scale, dtypes=SUPPORTED_DTYPES, window=None) -> None:
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
    if Hq != 0 and (Hkv == 0 or Hq % Hkv != 0):
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
    check_scale(scale)
    check_window(window)


def resolve_scale(scale, head_dim: int) -> float:
    s = check_scale(scale)
    return s if s is not None else head_dim ** -0.5


def check_query_positions(q_positions, q_len: int, k_len: int, device) -> None:
    """Absolute positions of the query rows: int LongTensor [Lq], strictly increasing, in 0..Lk-1, on q's device.
    One host sync (O(Lq))."""
    if not isinstance(q_positions, torch.Tensor):
        raise TypeError(f"q_positions: expected a torch.Tensor of integers, got {type(q_positions).__name__}")
    if q_positions.dtype not in _INT_DTYPES:
        raise TypeError(f"q_positions: expected an integer dtype, got {q_positions.dtype}")
    if tuple(q_positions.shape) != (q_len,):
        raise ValueError(f"q_positions: expected shape ({q_len},) (one position per query row), "
                         f"got {tuple(q_positions.shape)}")
    if q_positions.device != device:
        raise ValueError(f"q_positions: on device {q_positions.device}, but q is on {device}")
    if q_len == 0:
        return
    p = q_positions.long()
    lo, hi = int(p[0]), int(p[-1])
    if lo < 0 or hi >= k_len or bool((p[1:] <= p[:-1]).any()):
        raise ValueError(f"q_positions: must be strictly increasing positions in 0..{k_len - 1} (the keys' "
                         f"length), got first {lo}, last {hi}")
