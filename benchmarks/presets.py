"""Presets: which cases a sweep runs. `quick` is the default; `full` is the published GPU sweep.

Kernel sweeps keep tokens per batch constant (batch = tokens // seqlen). A preset is a list of
sub-sweeps so the full preset covers every axis without the whole cartesian product.
"""
from __future__ import annotations

from itertools import product
from typing import Dict, List

from .e2e_suite import E2ECase
from .kernel_suite import KernelCase

K = 1024

# Each sub-sweep: cartesian product over its lists. Keys: dtypes, seqlens, heads, head_dims, layouts.
PRESETS: Dict[str, Dict[str, Dict]] = {
    "quick": {
        "cuda": {
            "kernel": [dict(dtypes=["bf16"], seqlens=[1 * K, 2 * K, 4 * K, 8 * K, 16 * K], heads=[(32, 8)],
                            head_dims=[128], layouts=["aki"]),
                       # one long document: the long-context case (`layouts.LONG_LAYOUTS`)
                       dict(dtypes=["bf16"], seqlens=[16 * K], heads=[(32, 8)], head_dims=[128],
                            layouts=["long_video"])],
            "tokens": 16 * K, "modes": ["fwd", "fwd_bwd"],
            "e2e": dict(seqlens=[4 * K, 8 * K], layers=4, shape="phi3.5", dtype="bf16"),
        },
        "cpu": {
            "kernel": [dict(dtypes=["fp32"], seqlens=[256, 512], heads=[(4, 2)], head_dims=[64],
                            layouts=["aki", "many_short"])],
            "tokens": 512, "modes": ["fwd", "bwd", "fwd_bwd"],
            "e2e": dict(seqlens=[256, 512], layers=2, shape="tiny", dtype="fp32"),
        },
    },
    "full": {
        "cuda": {
            "kernel": [
                # headline: every length, both head layouts, Phi-3.5 and 128-wide heads
                dict(dtypes=["bf16"], seqlens=[2 ** i * K for i in range(8)], heads=[(32, 32), (32, 8)],
                     head_dims=[96, 128], layouts=["aki"]),
                # narrow heads, fp16, and the worst case for block skipping
                dict(dtypes=["bf16"], seqlens=[2 ** i * K for i in range(0, 8, 2)], heads=[(32, 8)],
                     head_dims=[64], layouts=["aki"]),
                dict(dtypes=["fp16"], seqlens=[2 ** i * K for i in range(0, 8, 2)], heads=[(32, 8)],
                     head_dims=[128], layouts=["aki"]),
                dict(dtypes=["bf16"], seqlens=[2 ** i * K for i in range(8)], heads=[(32, 8)],
                     head_dims=[128], layouts=["many_short"]),
                # one long document per row: the long-context case
                dict(dtypes=["bf16"], seqlens=[2 ** i * K for i in range(2, 8)], heads=[(32, 8)],
                     head_dims=[128], layouts=["long_video"]),
            ],
            "tokens": 128 * K, "modes": ["fwd", "bwd", "fwd_bwd"],
            "e2e": dict(seqlens=[4 * K, 8 * K, 16 * K, 32 * K], layers=8, shape="phi3.5", dtype="bf16"),
        },
        "cpu": {
            "kernel": [dict(dtypes=["fp32", "bf16"], seqlens=[256, 512, 1024, 2048], heads=[(4, 4), (4, 2)],
                            head_dims=[64], layouts=["aki", "many_short"])],
            "tokens": 2048, "modes": ["fwd", "bwd", "fwd_bwd"],
            "e2e": dict(seqlens=[256, 512, 1024], layers=2, shape="tiny", dtype="fp32"),
        },
    },
}


def kernel_cases(sweeps: List[Dict], tokens: int) -> List[KernelCase]:
    cases, seen = [], set()
    for sw in sweeps:
        for dt, L, (hq, hkv), d, lay in product(sw["dtypes"], sw["seqlens"], sw["heads"], sw["head_dims"],
                                                sw["layouts"]):
            c = KernelCase(dt, max(1, tokens // L), L, hq, hkv, d, lay)
            if c not in seen:
                seen.add(c)
                cases.append(c)
    return cases


def e2e_cases(spec: Dict) -> List[E2ECase]:
    return [E2ECase(spec["dtype"], 1, L, spec["layers"], shape=spec["shape"]) for L in spec["seqlens"]]


def parse_len(s: str) -> int:
    s = s.strip().lower()
    return int(float(s[:-1]) * K) if s.endswith("k") else int(s)
