"""Kernel-level providers: the same attention problem computed the ways a user could pick.

Each provider has a `build(inp)` step (mask or metadata construction from the ids, timed
separately) and a `forward(inp, state)` step (the attention itself). `causal_only` providers
compute plain causal attention over the whole row (no MMA, no documents): the speed ceiling;
they are checked against `mma` run with a plain causal mask.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from mma_kernels import MMAMask, mma_attention
from mma_kernels.reference import flex_mask_mod

from .layouts import Layout


@dataclass
class Inputs:
    q: torch.Tensor  # [B, Hq, L, D], requires grad
    k: torch.Tensor  # [B, Hkv, L, D]
    v: torch.Tensor
    layout: Layout  # ids on q's device

    @property
    def gqa(self) -> bool:
        return self.q.shape[1] != self.k.shape[1]


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Hugging Face's repeat_kv: [B, Hkv, L, D] -> [B, Hkv * groups, L, D]."""
    if groups == 1:
        return x
    B, H, L, D = x.shape
    return x[:, :, None].expand(B, H, groups, L, D).reshape(B, H * groups, L, D)


def dense_allowed(layout: Layout, rows_per_chunk: int = 4096) -> torch.Tensor:
    """Bool [B, 1, L, L] from the ids, built in row chunks (no O(L^2) temporaries beyond the result).

    Padding query rows may see themselves: their output is never used, and a row with no
    allowed key would make SDPA/eager produce NaN (Hugging Face unmasks such rows too).
    """
    m = MMAMask(layout.modality_ids, layout.segment_ids, layout.document_ids)
    B, L = layout.modality_ids.shape
    dev = layout.modality_ids.device
    out = torch.empty(B, 1, L, L, dtype=torch.bool, device=dev)
    cols = torch.arange(L, device=dev)
    for r0 in range(0, L, rows_per_chunk):
        rows = cols[r0:r0 + rows_per_chunk]
        out[:, 0, r0:r0 + len(rows)] = m.block(rows, cols)
    pad = layout.modality_ids == -1
    diag = torch.arange(L, device=dev)
    out[:, 0, diag, diag] |= pad
    return out


class Provider:
    name = ""
    causal_only = False  # computes plain causal attention, not MMA

    def unavailable(self, device: torch.device) -> Optional[str]:
        """Why this provider cannot run here, or None."""
        return None

    def no_backward(self, device: torch.device) -> Optional[str]:
        """Why backward cannot run here, or None."""
        return None

    def build(self, inp: Inputs):
        return None

    def forward(self, inp: Inputs, state) -> torch.Tensor:
        raise NotImplementedError

    def info(self, inp: Inputs, state) -> Dict[str, object]:
        """Extra facts for the record (backend that ran, compiled or not...)."""
        return {}


class MMA(Provider):
    name = "mma"

    def build(self, inp):
        lay = inp.layout
        return MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)

    def forward(self, inp, state):
        return mma_attention(inp.q, inp.k, inp.v, state)

    def info(self, inp, state):
        return {"backend": "triton" if inp.q.is_cuda else "torch (chunked CPU path)"}


def _allow_recompiles() -> None:
    """A sweep compiles FlexAttention once per shape: lift Dynamo's recompile limit (default 8),
    past which it would silently fall back to eager, unfused flex_attention."""
    import torch._dynamo

    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)


class Flex(Provider):
    """`mma_attention(backend="flex")`: FlexAttention with the BlockMask built from MMAMask's O(L)
    fields (`MMAMask.to_block_mask`, no per-pair mask evaluation); compiled on CUDA, eager on CPU."""

    name = "flex"

    def no_backward(self, device):
        return "FlexAttention has no backward on CPU" if device.type != "cuda" else None

    def unavailable(self, device):
        if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
            return "torch.nn.attention.flex_attention not available in this torch"
        return None

    def build(self, inp):
        from mma_kernels.flex import cached_block_mask

        if inp.q.is_cuda:
            _allow_recompiles()
        lay = inp.layout
        mask = MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)
        cached_block_mask(mask, inp.q.shape[2])  # the build every layer then reuses
        return mask

    def forward(self, inp, state):
        return mma_attention(inp.q, inp.k, inp.v, state, backend="flex")

    def info(self, inp, state):
        return {"backend": ("mma_attention(backend='flex'): torch.compile(flex_attention)" if inp.q.is_cuda
                            else "mma_attention(backend='flex'): flex_attention (eager, CPU)")}


class FlexCreateBlockMask(Flex):
    """The classic Flex way: `create_block_mask` evaluating the contract's mask_mod (written from
    the raw ids) on every (query, key) pair, compiled on CUDA; `flex_attention` with it."""

    name = "flex_cbm"
    _compiled = None

    @classmethod
    def kernel(cls, device):
        from torch.nn.attention.flex_attention import flex_attention

        if device.type != "cuda":
            return flex_attention  # compiling on CPU costs ~20 s per shape; eager flex is exact
        if cls._compiled is None:
            _allow_recompiles()
            cls._compiled = torch.compile(flex_attention, dynamic=False)
        return cls._compiled

    def build(self, inp):
        from torch.nn.attention.flex_attention import create_block_mask

        lay = inp.layout
        B, L = lay.modality_ids.shape
        mm = flex_mask_mod(lay.modality_ids, lay.segment_ids, lay.document_ids)
        return create_block_mask(mm, B, None, L, L, device=inp.q.device, _compile=inp.q.is_cuda)

    def forward(self, inp, state):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.kernel(inp.q.device)(inp.q, inp.k, inp.v, block_mask=state, enable_gqa=inp.gqa)

    def info(self, inp, state):
        return {"backend": ("torch.compile(flex_attention) + create_block_mask(_compile=True)" if inp.q.is_cuda
                            else "flex_attention (eager, CPU) + create_block_mask")}


def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


class _PinnedSDPA(Provider):
    """SDPA pinned to the first backend (in `order`) that accepts the call, recorded in `backend`."""

    order: List[str] = []

    def __init__(self):
        self._backend: Dict[tuple, str] = {}

    def _call(self, inp, state):
        raise NotImplementedError

    def forward(self, inp, state):
        from torch.nn.attention import sdpa_kernel

        key = (inp.q.device.type, tuple(inp.q.shape), tuple(inp.k.shape), inp.q.dtype)
        if key not in self._backend:
            errors = []
            for name in self.order:
                try:
                    with sdpa_kernel([_sdpa_backends()[name]]), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        out = self._call(inp, state)
                    self._backend[key] = name
                    return out
                except RuntimeError as exc:
                    if "out of memory" in str(exc).lower():
                        raise
                    errors.append(f"{name}: {str(exc).splitlines()[0][:80]}")
            raise RuntimeError("no SDPA backend accepted the call: " + "; ".join(errors))
        with sdpa_kernel([_sdpa_backends()[self._backend[key]]]):
            return self._call(inp, state)

    def info(self, inp, state):
        key = (inp.q.device.type, tuple(inp.q.shape), tuple(inp.k.shape), inp.q.dtype)
        return {"backend": f"sdpa:{self._backend.get(key, '?')}"}


class SDPADense(_PinnedSDPA):
    """SDPA with a dense boolean [B, 1, L, L] mask from the ids (the AKI reference code's way).

    Keys/values are repeated for GQA as Hugging Face's sdpa path does whenever a mask is given.
    """

    name = "sdpa_dense"
    order = ["flash", "efficient", "cudnn", "math"]

    def build(self, inp):
        return dense_allowed(inp.layout)

    def _call(self, inp, state):
        g = inp.q.shape[1] // inp.k.shape[1]
        return F.scaled_dot_product_attention(inp.q, repeat_kv(inp.k, g), repeat_kv(inp.v, g), attn_mask=state)


class SDPACausal(_PinnedSDPA):
    """SDPA with is_causal=True and no MMA: the ceiling. Flash first, then cuDNN (default priority)."""

    name = "sdpa_causal"
    causal_only = True
    order = ["flash", "cudnn", "efficient", "math"]

    def _call(self, inp, state):
        return F.scaled_dot_product_attention(inp.q, inp.k, inp.v, is_causal=True, enable_gqa=inp.gqa)


class EagerDense(Provider):
    """Hugging Face's eager path: repeat_kv, matmul, additive mask, fp32 softmax, matmul."""

    name = "eager_dense"

    def build(self, inp):
        allowed = dense_allowed(inp.layout)
        add = torch.zeros(allowed.shape, dtype=inp.q.dtype, device=allowed.device)
        return add.masked_fill_(~allowed, torch.finfo(inp.q.dtype).min)

    def forward(self, inp, state):
        q, g = inp.q, inp.q.shape[1] // inp.k.shape[1]
        k, v = repeat_kv(inp.k, g), repeat_kv(inp.v, g)
        w = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5 + state
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(w, v)


class FlashAttn(Provider):
    """flash-attn's causal kernel (no MMA): a second ceiling, when the package is installed."""

    name = "flash_attn"
    causal_only = True

    def unavailable(self, device):
        if device.type != "cuda":
            return "flash_attn needs CUDA"
        if importlib.util.find_spec("flash_attn") is None:
            return "flash_attn is not installed"
        return None

    def forward(self, inp, state):
        from flash_attn import flash_attn_func

        t = lambda x: x.transpose(1, 2)  # noqa: E731  [B, H, L, D] -> [B, L, H, D]
        return t(flash_attn_func(t(inp.q), t(inp.k), t(inp.v), causal=True))

    def info(self, inp, state):
        import flash_attn

        return {"backend": f"flash_attn {flash_attn.__version__}"}


PROVIDERS = {p.name: p for p in (MMA, Flex, FlexCreateBlockMask, SDPADense, EagerDense, SDPACausal, FlashAttn)}
DEFAULT_ORDER = ["mma", "flex", "sdpa_dense", "eager_dense", "sdpa_causal", "flash_attn"]
