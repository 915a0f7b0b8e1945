"""`python -m benchmarks --suite decode`: one decoding step (Lq new query rows over a KV cache of Lk keys).

Providers, on the same q, K/V cache and ids (checked against `mma_decode` before they are timed):

- ``mma_decode``: `mma_attention` on CUDA, the split-KV decode kernel (`decode_ops.DECODE = "auto"`);
- ``mma_prefill``: the same call with ``decode_ops.DECODE = "off"``: the prefill forward, what decoding ran before;
- ``sdpa``: `scaled_dot_product_attention` over the cache with the step's boolean mask rows (GQA by
  ``enable_gqa``), the way eager/SDPA decoding of an MMA model attends;
- ``flash_kvcache``: FlashAttention's `flash_attn_with_kvcache` (causal over the cache: equal to MMA for text
  rows with no padding, the layout used here), where `flash_attn` is installed.

Layout: text, a 576-token image run with look-ahead at the start of the cache, text; the new rows are text
(an answer being generated). On CUDA: the Triton kernels, timed with `triton.testing.do_bench` (median). Without
CUDA the suite degrades as the others do: the Triton providers are reported ``skipped`` (the kernels need a GPU;
the interpreter is not a benchmark) and only the CPU path (`mma_attention` on CPU tensors) and SDPA are timed at
small sizes, which says nothing about the GPU kernels.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, List

import torch

from .records import environment
from .timing import Timer, is_oom

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (Lk values, heads, head dims, query rows), per device
CASES = {
    "cuda": dict(seqlens=[4096, 16384, 65536, 131072], heads=[(32, 8), (32, 32), (28, 4)], head_dims=[128],
                 q_lens=[1, 4], batch=[1, 8]),
    "cpu": dict(seqlens=[1024, 4096], heads=[(8, 2)], head_dims=[64], q_lens=[1], batch=[1]),
}
PROVIDERS = ("mma_decode", "mma_prefill", "sdpa", "flash_kvcache")


def _layout(B: int, Lk: int, device):
    from mma_kernels import MMAMask

    mod = torch.zeros(B, Lk, dtype=torch.long)
    a = min(Lk // 8, max(0, Lk - 600))
    mod[:, a:a + min(576, Lk // 2)] = 1
    seg = torch.zeros_like(mod)
    seg[:, Lk - Lk // 4:] = 1  # the answer: a segment of its own
    return MMAMask(mod.to(device), seg.to(device))


def _providers(device):
    from mma_kernels import mma_attention
    from mma_kernels.ops import decode_ops

    def mma(decode):
        def f(q, k, v, mask, dense):
            old = decode_ops.DECODE
            decode_ops.DECODE = "auto" if decode else "off"
            try:
                return mma_attention(q, k, v, mask)
            finally:
                decode_ops.DECODE = old
        return f

    def sdpa(q, k, v, mask, dense):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense[:, None], enable_gqa=True)

    out = {"mma_decode": mma(True), "mma_prefill": mma(False), "sdpa": sdpa}
    try:
        from flash_attn import flash_attn_with_kvcache

        def fa(q, k, v, mask, dense):
            o = flash_attn_with_kvcache(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return o.transpose(1, 2)
        out["flash_kvcache"] = fa
    except ImportError:
        pass
    return out


def run(out_dir: str, device: str = "auto", rep_ms: int = 100, seqlens=None, dtype: str = "bf16") -> int:
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    cuda = dev.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)
        print("No CUDA GPU: the decode kernel needs one. Timing only what runs on CPU at small sizes (the CPU "
              "path and SDPA); the Triton providers are reported as skipped.", file=sys.stderr)
    spec = dict(CASES[dev.type])
    if seqlens:
        spec["seqlens"] = seqlens
    dt = DTYPES[dtype] if cuda else torch.float32
    env = environment(dev)
    timer = Timer(dev, rep_ms=rep_ms)
    provs = _providers(dev)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.jsonl")
    recs: List[Dict] = []
    g = torch.Generator().manual_seed(0)
    for B in spec["batch"]:
        for Lk in spec["seqlens"]:
            for hq, hkv in spec["heads"]:
                for D in spec["head_dims"]:
                    for Lq in spec["q_lens"]:
                        mask = _layout(B, Lk, dev)
                        q = torch.randn(B, hq, Lq, D, generator=g).to(dev, dt)
                        k, v = (torch.randn(B, hkv, Lk, D, generator=g).to(dev, dt) for _ in range(2))
                        dense = mask.to_dense(Lq)
                        base = dict(env, suite="decode", dtype=str(dt).replace("torch.", ""), batch=B, seqlen=Lk,
                                    q_len=Lq, heads_q=hq, heads_kv=hkv, head_dim=D, timer=timer.name)
                        ref = None
                        for name in PROVIDERS:
                            rec = dict(base, provider=name, median_ms=None, status="ok", note=None)
                            if name not in provs:
                                rec.update(status="skipped", note="flash_attn is not installed")
                            elif not cuda and name == "mma_prefill":
                                rec.update(status="skipped", note="the Triton kernels need a CUDA GPU")
                            else:
                                fn = provs[name]
                                try:
                                    with torch.no_grad():
                                        out = fn(q, k, v, mask, dense)
                                        if ref is None:
                                            ref = out.float()
                                        err = (out.float() - ref).abs().max().item()
                                        tol = 1e-2 if dt != torch.float32 else 1e-4
                                        rec.update(check_err=err, check_tol=tol)
                                        if err > tol:
                                            rec.update(status="error", note=f"differs from mma_decode by {err:.2e}")
                                        else:
                                            rec["median_ms"] = timer.median_ms(lambda: fn(q, k, v, mask, dense))
                                except Exception as exc:  # noqa: BLE001 - a provider failing is a finding
                                    first = str(exc).splitlines()[0][:200] if str(exc) else ""
                                    rec.update(status="oom" if is_oom(exc) else "error",
                                               note=f"{type(exc).__name__}: {first}")
                            if not cuda and name == "mma_decode":
                                rec["note"] = "CPU path (the decode kernel needs a CUDA GPU)"
                            # bytes of the cache read once, and the bandwidth that implies
                            cache = 2 * B * hkv * Lk * D * q.element_size()
                            rec["kv_cache_mib"] = round(cache / 2**20, 2)
                            if rec["median_ms"]:
                                rec["cache_gb_per_s"] = round(cache / (rec["median_ms"] * 1e-3) / 1e9, 1)
                            recs.append(rec)
                            with open(path, "a", encoding="utf-8") as f:
                                f.write(json.dumps(rec) + "\n")
                            print(f"decode {rec['dtype']} B={B} Lk={Lk} H={hq}/{hkv} D={D} Lq={Lq} {name:>14}: "
                                  f"{rec['status']:>7} {rec['median_ms'] and round(rec['median_ms'], 4)} ms "
                                  f"{rec.get('cache_gb_per_s') or ''}{' GB/s' if rec.get('cache_gb_per_s') else ''}"
                                  f"{'  (' + rec['note'] + ')' if rec['note'] else ''}", flush=True)
    print(f"{len(recs)} records -> {path}")
    if not cuda:
        print("Kernel timings need a CUDA GPU: these CPU numbers only show the suite works.")
    return 1 if any(r["status"] == "error" for r in recs) else 0


def main_from_args(args) -> int:
    out = os.path.join(args.output, "decode")
    if args.save_results:  # a GPU run to commit, next to the kernel suite's
        import datetime as _dt
        import re

        if not torch.cuda.is_available():
            raise SystemExit("--save-results is for GPU runs (benchmarks/results/ holds GPU results only)")
        from .__main__ import RESULTS_ROOT

        slug = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
        out = os.path.join(RESULTS_ROOT, slug, _dt.date.today().isoformat(), "decode")
    if os.path.exists(os.path.join(out, "results.jsonl")) and not args.resume:
        os.remove(os.path.join(out, "results.jsonl"))
    t = time.time()
    rc = run(out, args.device, args.rep_ms, args.seqlens, (args.dtype or ["bf16"])[0])
    print(f"decode suite: {time.time() - t:.0f} s")
    return rc
