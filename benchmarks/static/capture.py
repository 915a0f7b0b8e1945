"""Compile the kernels for a GPU target on a machine without one, exactly as the runtime would launch them.

The launchers in `mma_kernels.ops.triton_ops` are called on ``meta`` tensors (shapes and strides, no
storage) with a real `MMAMask`; every launch is captured instead of run, so the argument list, the
ints, the strides and the constexprs are the runtime's own (new kernel arguments come along with no
change here). Each captured launch is then compiled with the JIT's own binder (`JITFunction.warmup`)
against a stand-in driver that reports the requested GPU target, so the specialisation is the one a
user's GPU gets: divisibility-16 attributes on 16-byte aligned pointers and ints, i32 or i64 as the
values require, constexprs as launched. Needs no GPU and no ``TRITON_INTERPRET``.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KINDS = ("fwd", "dq", "dkdv")


@dataclass(frozen=True)
class Launch:
    kind: str  # fwd, dq, dkdv
    args: tuple  # positional arguments as the launcher passes them
    meta: Dict  # keyword arguments (constexprs) as the launcher passes them


class _TargetDriver:
    """Stands in for the CUDA driver: reports a GPU target, launches nothing."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def is_active(self):
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("meta")


_ARCH = None


@contextlib.contextmanager
def target_driver(arch: int):
    from triton.runtime.driver import driver

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("static compilation needs TRITON_INTERPRET unset (run it in a fresh process)")
    global _ARCH
    from mma_kernels.ops import triton_ops

    if _ARCH != arch:  # the JIT keeps one binder (with its target) per device: drop those of another arch
        for fn in triton_ops._raw.values():
            fn.device_caches.clear()
        _ARCH = arch
    prev = getattr(driver, "_active", None)
    driver.set_active(_TargetDriver(arch))
    try:
        yield
    finally:
        driver._active = prev


class _Capture:
    """Takes the place of an autotuned kernel in `triton_ops._tuned`: records ``kernel[grid](*args, **meta)``."""

    def __init__(self, kind: str, sink: List[Launch]):
        self.kind, self.sink = kind, sink

    def __getitem__(self, grid):
        return lambda *args, **meta: self.sink.append(Launch(self.kind, args, meta))


def capture_launches(dtype: str = "bf16", head_dim: int = 128, batch: int = 1, heads_q: int = 32, heads_kv: int = 8,
                     seqlen: int = 16384, features: Tuple[str, ...] = (), arch: int = 90) -> Dict[str, Launch]:
    """Run the real forward and backward launchers on meta tensors and return their launches by kind.

    `arch`: the launchers' device-dependent choices are made as on that GPU (TMA descriptors from sm_90 on,
    see `triton_ops.TMA`).

    `features`: ``"groups"`` (a second mutual level, `MMAMask(group_ids=...)`), ``"window"`` (a sliding
    window) switch on the kernels' optional paths, as a user's call would; ``"padding"`` left-pads the row
    (a padded batch: the masked tiles keep pointer loads for V, `triton_ops._tma_level`).
    """
    from mma_kernels import MMAMask
    from mma_kernels.ops import triton_ops

    if triton_ops.interpreting():
        raise RuntimeError("static compilation needs TRITON_INTERPRET unset")
    unknown = set(features) - {"groups", "window", "padding"}
    if unknown:
        raise ValueError(f"features: expected groups, window and/or padding, got {sorted(unknown)}")
    dt = DTYPES[dtype]
    mk = lambda h: torch.empty(batch, h, seqlen, head_dim, device="meta", dtype=dt, requires_grad=True)  # noqa: E731
    q, k, v = mk(heads_q), mk(heads_kv), mk(heads_kv)
    # a realistic mask: text, one image with look-ahead, text (the values do not enter the specialisation)
    mod = torch.zeros(batch, seqlen, dtype=torch.int32)
    mod[:, seqlen // 8: seqlen // 8 + 576] = 1
    if "padding" in features:
        mod[:, :5] = -1
    kw = {}
    if "groups" in features:
        kw["group_ids"] = torch.zeros_like(mod)
    mask = MMAMask(mod, torch.zeros_like(mod), **kw)
    extra = ()
    if "window" in features:
        window = 4096
        extra = (mask.window_fields(window), window)
    sink: List[Launch] = []
    saved, saved_tma = dict(triton_ops._tuned), triton_ops.TMA
    try:
        if triton_ops.TMA == "auto":
            triton_ops.TMA = "on" if arch >= 90 else "off"
        for kind in saved:
            triton_ops._tuned[kind] = _Capture(kind, sink)
        out, _lse = triton_ops.TritonMMAttention.apply(q, k, v, mask, head_dim ** -0.5, *extra)
        torch.autograd.grad(out, (q, k, v), torch.empty_like(out))
    finally:
        triton_ops._tuned.update(saved)
        triton_ops.TMA = saved_tma
    launches = {ln.kind: ln for ln in sink}
    missing = [k for k in KINDS if k not in launches]
    if missing:
        raise RuntimeError(f"the launchers made no launch of {missing} (captured {[ln.kind for ln in sink]})")
    return launches


def autotune_configs(kind: str, launch: Launch) -> Tuple[list, list]:
    """(all configs in the autotune list, the configs left after its prune for this launch)."""
    from mma_kernels.ops import triton_ops

    tuner = triton_ops._tuned[kind]
    named = dict(zip(tuner.arg_names, launch.args))
    prune = getattr(tuner, "early_config_prune", None)
    kept = prune(tuner.configs, named, **launch.meta) if prune else list(tuner.configs)
    return list(tuner.configs), list(kept)


def config_key(block_m: int, block_n: int, num_warps: int, num_stages: int) -> tuple:
    return (block_m, block_n, num_warps, num_stages)


def key_of(cfg) -> tuple:
    return config_key(cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)


def compile_launch(launch: Launch, block_m: int, block_n: int, num_warps: int, num_stages: int, arch: int = 90):
    """Compile one captured launch at one tile config for sm_<arch>; returns triton's CompiledKernel."""
    from mma_kernels.ops import triton_ops

    fn = triton_ops._raw[launch.kind]
    with target_driver(arch):
        return fn.warmup(*launch.args, grid=(1,), BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
                         num_stages=num_stages, **launch.meta)


def specialisation(kernel) -> Dict[str, object]:
    """What the binder decided: the signature (types per argument) and the attributes (e.g. divisibility)."""
    src = kernel.src
    return {"signature": dict(src.signature), "attrs": {str(k): v for k, v in src.attrs.items()}}
