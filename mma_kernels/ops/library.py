"""`torch.library` registration of the fused op, so `torch.compile` traces through it without a graph break.

``mma_kernels::attention_fwd`` / ``mma_kernels::attention_bwd`` take the mask's O(L) int32 fields
(`MMAMask.meta`, `MMAMask.padcum`, and under a sliding window `MMAMask.window_fields(window)`)
instead of the `MMAMask` object (which is not a tensor); the mask is still built once, outside the op. Both ops have fake (meta) implementations and the
forward has autograd registered, so compiled graphs (Dynamo + AOTAutograd, any backend) keep the
attention as one opaque node in forward and backward.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..mask import MMAMask

_BACKENDS = ("torch", "triton")


def mask_from_fields(meta: Tensor, padcum: Tensor, pad_keys: bool = True, doc_length: int = 0) -> MMAMask:
    """An `MMAMask` view of already built fields (no recomputation, no validation). `pad_keys` and `doc_length`:
    the built mask's host-side figures (`MMAMask.pad_keys`, `.doc_length`), which the Triton launchers read (TMA
    level 2 without padding; the autotune key's document class); by default the conservative ones."""
    m = MMAMask.__new__(MMAMask)
    m.meta, m.padcum = meta, padcum
    m.pad_keys, m.doc_length = pad_keys, doc_length
    m.batch_size, m.seq_len = meta.shape[0], meta.shape[2]
    m.device = meta.device
    m.policy = m.group_policy = None
    m._windows = {}
    return m


class _Ctx(SimpleNamespace):
    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def _impl(backend: str):
    if backend == "triton":
        from .triton_ops import TritonMMAttention as Fn
    elif backend == "torch":
        from .torch_ops import TorchMMAttention as Fn
    else:
        raise ValueError(f"backend: expected one of {_BACKENDS} inside the op, got {backend!r}")
    return Fn


@torch.library.custom_op("mma_kernels::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, meta: Tensor, padcum: Tensor, scale: float, backend: str,
                  win: Optional[Tensor] = None, window: Optional[int] = None, pad_keys: bool = True,
                  doc_length: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """(out, lse, stats): stats are the row statistics the backward recomputes p from (`_stats_shape`)."""
    ctx = _Ctx()
    mask = mask_from_fields(meta, padcum, pad_keys, doc_length)
    out, lse = _impl(backend).forward(ctx, q, k, v, mask, scale, win, window)
    stats = ctx.saved_tensors[-1]
    if stats is None:
        stats = q.new_empty(_stats_shape(q, backend), dtype=torch.float32)
    return out, lse, stats.reshape(_stats_shape(q, backend))


def _stats_shape(q: Tensor, backend: str):
    """Row max and 1/sum, [2, B, Hq, Lq] float32: always on the torch path, for fp32 inputs on Triton
    (and the fp32 output [B, Hq, Lq, D] under `triton_ops.HALF_DELTA == "fp32_out"`, fp16/bf16)."""
    B, Hq, Lq, D = q.shape
    if backend == "torch" or q.dtype == torch.float32:
        return (2, B, Hq, Lq)
    from . import triton_ops

    return (B, Hq, Lq, D) if triton_ops.HALF_DELTA == "fp32_out" else (0,)


@attention_fwd.register_fake
def _(q, k, v, meta, padcum, scale, backend, win=None, window=None, pad_keys=True, doc_length=0):
    B, Hq, Lq, D = q.shape
    return (q.new_empty((B, Hq, Lq, D)), q.new_empty((B, Hq, Lq), dtype=torch.float32),
            q.new_empty(_stats_shape(q, backend), dtype=torch.float32))


@torch.library.custom_op("mma_kernels::attention_bwd", mutates_args=())
def attention_bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                  dlse: Optional[Tensor], meta: Tensor, padcum: Tensor, scale: float, backend: str,
                  win: Optional[Tensor] = None, window: Optional[int] = None,
                  stats: Optional[Tensor] = None, pad_keys: bool = True, doc_length: int = 0
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    stats = stats if stats is not None and stats.numel() else None
    ctx = _Ctx(saved_tensors=(q, k, v, out, lse, win, stats), mask=mask_from_fields(meta, padcum, pad_keys, doc_length),
               scale=scale, window=window)
    dq, dk, dv = _impl(backend).backward(ctx, dout, dlse)[:3]
    # outputs of a custom op may not alias its inputs
    return tuple(t.clone() if t is x else t for t, x in ((dq, q), (dk, k), (dv, v)))


@attention_bwd.register_fake
def _(q, k, v, out, lse, dout, dlse, meta, padcum, scale, backend, win=None, window=None, stats=None, pad_keys=True,
      doc_length=0):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, meta, padcum, scale, backend, win, window, pad_keys, doc_length = inputs
    out, lse, stats = output
    ctx.save_for_backward(q, k, v, out, lse, meta, padcum, win, stats)
    ctx.scale, ctx.backend, ctx.window = scale, backend, window
    ctx.pad_keys, ctx.doc_length = pad_keys, doc_length


def _backward(ctx, dout, dlse, dstats):
    q, k, v, out, lse, meta, padcum, win, stats = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = attention_bwd(q, k, v, out, lse, dout.contiguous(), dlse, meta, padcum, ctx.scale, ctx.backend,
                               win, ctx.window, stats, ctx.pad_keys, ctx.doc_length)
    return dq, dk, dv, None, None, None, None, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def mma_attention_op(q: Tensor, k: Tensor, v: Tensor, mask: MMAMask, scale: float, backend: str,
                     win: Optional[Tensor] = None, window: Optional[int] = None):
    """(out, lse) through the registered op. `scale` resolved, `backend` already picked ("torch"/"triton"),
    `window` effective (None or < Lk) with `win = mask.window_fields(window)`. Outside a compiled region the
    mask's host-side figures go along (`mask_from_fields`: the Triton kernels' TMA level and autotune key); inside
    one the op takes the conservative defaults, so Dynamo neither guards on them nor recompiles as they change."""
    flags = {}
    if not torch.compiler.is_compiling():
        flags = dict(pad_keys=bool(getattr(mask, "pad_keys", True)), doc_length=int(getattr(mask, "doc_length", 0)))
    return attention_fwd(q, k, v, mask.meta, mask.padcum, float(scale), backend, win, window, **flags)[:2]
