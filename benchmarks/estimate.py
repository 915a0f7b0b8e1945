"""Rough CPU cost of a benchmark run, told before it starts (CPU runs only; a GPU run is not estimated).

On CPU every provider computes attention densely or in chunks of the full L x L score matrix, so each
kernel case costs about (calls) x (4 * B * Hq * L^2 * D matmul FLOPs at this machine's matmul rate +
a few passes over the B * Hq * L^2 scores at its elementwise rate). The two rates are measured here
in ~0.1 s (one small matmul and one exp in the case's dtype, on the threads the run will use); the
call counts follow the suite (a warm-up and >= 3 timed calls per mode, one checked forward, the
backward ~2.5 forwards). Peak memory: the dense masks and a few fp32 score-sized buffers of the
largest case. Good to a factor of about 2: enough to refuse a run that would take an hour.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, Tuple

import torch

# forward-call equivalents per provider and mode: warm-up + 3 timed calls; bwd/fwd_bwd cost 2.5 / 3.5 forwards
CALLS = {"fwd": 4 * 1.0, "bwd": 1 + 4 * 2.5, "fwd_bwd": 4 * 3.5}
CPU_PROVIDERS = {"mma", "flex", "sdpa_dense", "eager_dense", "sdpa_causal"}
SCORE_PASSES = 12  # elementwise passes over the scores per forward (scale, mask, max, exp, sum, divide, casts)
_RATES: Dict[torch.dtype, Tuple[float, float]] = {}


def rates(dtype: torch.dtype) -> Tuple[float, float]:
    """(matmul FLOP/s, elementwise elements/s) on this machine for `dtype`, measured once."""
    if dtype not in _RATES:
        n = 256
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        x = torch.randn(1 << 20).to(dtype)
        a @ b
        x.exp()
        best_mm = best_el = float("inf")
        for _ in range(5):  # best of 5: a shared machine's load only ever slows a measurement down
            t = time.perf_counter()
            a @ b
            best_mm = min(best_mm, time.perf_counter() - t)
            t = time.perf_counter()
            x.float().exp()
            best_el = min(best_el, time.perf_counter() - t)
        _RATES[dtype] = (2 * n ** 3 / best_mm, x.numel() / best_el)
    return _RATES[dtype]


def kernel_case_cost(case, modes: Iterable[str], providers: Iterable[str], dtype: torch.dtype,
                     rep_s: float = 0.1) -> Tuple[float, int]:
    """(seconds, peak bytes) of one kernel case on CPU; `rep_s`: the timer's minimum window per measurement."""
    mm_rate, el_rate = rates(dtype)
    scores = case.batch * case.heads_q * case.seqlen ** 2
    fwd = 4 * scores * case.head_dim / mm_rate + SCORE_PASSES * scores / el_rate
    provs = [p for p in providers if p in CPU_PROVIDERS]
    calls, fixed = 0.0, 0.0
    for p in provs:
        ms = ["fwd"] if p == "flex" else list(modes)  # FlexAttention has no CPU backward
        calls += 2 + sum(CALLS[m] for m in ms)  # + mask build and the checked forward
        fixed += (len(ms) + 1) * (rep_s + 0.05)  # each timing fills its window; Python and autograd overhead
    calls += 2  # the mma references (MMA and causal mask)
    esize = torch.finfo(dtype).bits // 8
    peak = 3 * 4 * scores + case.batch * case.seqlen ** 2 * (1 + esize)  # fp32 scores, grads; bool + additive mask
    return calls * fwd + fixed, int(peak)


def e2e_case_cost(case, dims: Dict, providers: Iterable[str], dtype: torch.dtype) -> Tuple[float, int]:
    mm_rate, el_rate = rates(dtype)
    h, i, v, layers = dims["hidden_size"], dims["intermediate_size"], dims["vocab_size"], case.layers
    params = layers * (4 * h * h + 3 * h * i) + 2 * v * h
    tokens = case.batch * case.seqlen
    scores = case.batch * dims["num_attention_heads"] * case.seqlen ** 2 * layers
    step = 6 * params * tokens / mm_rate + 3 * SCORE_PASSES * scores / el_rate
    n = len([p for p in providers if p in ("mma", "sdpa_dense", "sdpa_causal")])
    return n * (6 * step + 3.0), int(4 * 4 * scores / max(layers, 1) + 16 * params)  # + model build per provider


def estimate(kcases, ecases, modes, providers, dtypes: Dict[str, torch.dtype], e2e_dims,
             rep_s: float = 0.1) -> Tuple[float, int]:
    """(seconds, peak bytes) of a whole CPU run."""
    secs, peak = 0.0, 0
    for c in kcases:
        s, m = kernel_case_cost(c, modes, providers, dtypes[c.dtype], rep_s)
        secs, peak = secs + s, max(peak, m)
    for c in ecases:
        s, m = e2e_case_cost(c, e2e_dims(c), providers, dtypes[c.dtype])
        secs, peak = secs + s, max(peak, m)
    return secs, peak
