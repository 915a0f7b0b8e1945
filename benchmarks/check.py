"""Correctness gate: a provider's output must match `mma` before it is timed."""
from __future__ import annotations

import torch

# Largest allowed max|out - ref| over the valid query rows, in units of the reference's RMS
# (bf16 rounding alone gives ~0.1 on rows that see few keys).
TOLERANCE = {torch.float32: 2e-2, torch.float16: 0.15, torch.bfloat16: 0.5}  # a wrong mask gives ~5-10


class Mismatch(AssertionError):
    """A failed check; `err` and `tol` hold the measured error and the tolerance when there is one."""

    def __init__(self, msg: str, err: float = None, tol: float = None):
        super().__init__(msg)
        self.err, self.tol = err, tol


def tolerance(dtype: torch.dtype) -> float:
    return TOLERANCE.get(dtype, 2e-3)


def compare(out: torch.Tensor, ref: torch.Tensor, valid_rows: torch.Tensor, rows_per_chunk: int = 2048) -> float:
    """max |out - ref| / rms(ref) over query rows where `valid_rows` [B, L] is True.

    `ref` may live on the CPU (kept off the GPU so it does not count in peak memory); the
    comparison runs in row chunks on `out`'s device.
    """
    if out.shape != ref.shape:
        raise Mismatch(f"output shape {tuple(out.shape)} differs from mma's {tuple(ref.shape)}")
    L = out.shape[2]
    max_err, sq, n = 0.0, 0.0, 0
    for r0 in range(0, L, rows_per_chunk):
        o = out[:, :, r0:r0 + rows_per_chunk].float()
        r = ref[:, :, r0:r0 + rows_per_chunk].to(o.device).float()
        m = valid_rows[:, None, r0:r0 + rows_per_chunk, None].to(o.device).expand_as(o)
        if not m.any():
            continue
        if not torch.isfinite(o[m]).all():
            raise Mismatch("output has NaN/inf on valid query rows")
        max_err = max(max_err, float((o - r).abs()[m].max()))
        sq += float((r[m] ** 2).sum())
        n += int(m.sum())
    rms = (sq / max(n, 1)) ** 0.5
    return max_err / max(rms, 1e-12)


def check_close(out: torch.Tensor, ref: torch.Tensor, valid_rows: torch.Tensor) -> float:
    """Raise `Mismatch` unless `out` matches `ref` on the valid rows; return the relative error."""
    err = compare(out, ref, valid_rows)
    tol = tolerance(out.dtype)
    if not err <= tol:
        raise Mismatch(f"output differs from mma: max|diff|/rms(ref) = {err:.3g} > {tol:g}", err, tol)
    return err
