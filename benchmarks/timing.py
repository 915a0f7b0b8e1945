"""Timing and peak-memory measurement with the same median semantics on CUDA and CPU.

CUDA: ``triton.testing.do_bench(..., return_mode="median")`` after one explicit warm-up call
(so autotuning and compilation happen before timing). CPU: ``time.perf_counter`` around each
call, one warm-up call excluded, median over at least 3 calls. Each record names its timer.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Optional

import torch

CUDA_TIMER = "triton.do_bench(median)"
CPU_TIMER = "perf_counter(median)"


class Timer:
    def __init__(self, device: torch.device, warmup_ms: int = 25, rep_ms: int = 100, cpu_max_calls: int = 20):
        self.device = device
        self.cuda = device.type == "cuda"
        self.warmup_ms, self.rep_ms, self.cpu_max_calls = warmup_ms, rep_ms, cpu_max_calls
        self.name = CUDA_TIMER if self.cuda else CPU_TIMER

    def median_ms(self, fn: Callable[[], object]) -> float:
        fn()  # warm-up: autotuning, compilation, caches; never timed
        if self.cuda:
            import triton.testing

            torch.cuda.synchronize()
            return float(triton.testing.do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median"))
        times = []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start) * 1e3 < self.rep_ms:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= self.cpu_max_calls:
                break
        return statistics.median(times)

    def peak_mib(self, fn: Callable[[], object]) -> Optional[float]:
        """Peak allocated memory (MiB) during one call, everything alive included. None on CPU."""
        if not self.cuda:
            return None
        free_memory()
        torch.cuda.reset_peak_memory_stats(self.device)
        fn()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if isinstance(exc, oom_types) or isinstance(exc, MemoryError):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg
