"""Kernel-level suite: every provider on the same q/k/v and ids, forward / backward / both."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List

import torch

from mma_kernels import MMAMask, mma_attention

from .check import Mismatch, check_close, tolerance
from .layouts import causal_layout, make_layout
from .providers import PROVIDERS, Inputs, Provider
from .records import tflops
from .timing import Timer, free_memory, is_oom

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MASK_FIGURE = ("mma", "flex")  # providers that also get a "<name>+mask" record (kernel + mask build)


@dataclass(frozen=True)
class KernelCase:
    dtype: str
    batch: int
    seqlen: int
    heads_q: int
    heads_kv: int
    head_dim: int
    layout: str

    def describe(self) -> str:
        return (f"{self.layout} {self.dtype} B={self.batch} L={self.seqlen} "
                f"H={self.heads_q}/{self.heads_kv} D={self.head_dim}")


def _error_text(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


class KernelRunner:
    def __init__(self, device: torch.device, timer: Timer, providers: Iterable[str], modes: Iterable[str],
                 seed: int = 0):
        self.device, self.timer, self.seed = device, timer, seed
        self.modes = list(modes)
        self.providers: Dict[str, Provider] = {n: PROVIDERS[n]() for n in providers}

    def run(self, case: KernelCase) -> List[Dict]:
        dev, dt = self.device, DTYPES[case.dtype]
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        B, L, D = case.batch, case.seqlen, case.head_dim
        mk = lambda h: torch.randn(B, h, L, D, generator=g).to(dev, dt).requires_grad_(True)  # noqa: E731
        lay = make_layout(case.layout, B, L, seed=self.seed).to(dev)
        inp = Inputs(mk(case.heads_q), mk(case.heads_kv), mk(case.heads_kv), lay)
        grad_out = torch.randn(B, case.heads_q, L, D, generator=g).to(dev, dt)
        mma_pairs = int(MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids).num_allowed().sum())
        causal_pairs = B * L * (L + 1) // 2
        refs: Dict[bool, tuple] = {}

        def reference(causal: bool):
            if causal not in refs:
                rl = causal_layout(B, L).to(dev) if causal else lay
                m = MMAMask(rl.modality_ids, rl.segment_ids, rl.document_ids)
                with torch.no_grad():
                    refs[causal] = (mma_attention(inp.q, inp.k, inp.v, m).cpu(), rl.valid_rows())
                free_memory()
            return refs[causal]

        base = dict(suite="kernel", dtype=case.dtype, batch=B, seqlen=L, heads_q=case.heads_q,
                    heads_kv=case.heads_kv, head_dim=D, layout=case.layout, timer=self.timer.name)
        records: List[Dict] = []
        for name, prov in self.providers.items():
            pairs = causal_pairs if prov.causal_only else mma_pairs
            recs = self._run_provider(prov, inp, grad_out, reference, dict(base, provider=name, allowed_pairs=pairs))
            records += recs
            free_memory()
        del inp, refs
        free_memory()
        return _with_ratios(records)

    def _run_provider(self, prov: Provider, inp: Inputs, grad_out, reference: Callable, base: Dict) -> List[Dict]:
        modes = self.modes
        out_recs = lambda status, note, **kw: [dict(base, mode=m, status=status, note=note, **kw) for m in modes]  # noqa: E731
        why = prov.unavailable(self.device)
        if why:
            return out_recs("skipped", why)
        state = None
        nograd = Inputs(inp.q.detach(), inp.k.detach(), inp.v.detach(), inp.layout)  # forward-only calls
        try:
            mask_ms = self.timer.median_ms(lambda: prov.build(inp))
            free_memory()
            state = prov.build(inp)
            with torch.no_grad():
                out = prov.forward(nograd, state)
            ref, valid = reference(prov.causal_only)
            err = check_close(out, ref, valid)
            del out
            info = dict(prov.info(inp, state), mask_ms=mask_ms if state is not None else None)
        except Mismatch as exc:
            fail = dict(check="fail", check_err=exc.err, check_tol=exc.tol)
            return out_recs("error", f"correctness check failed, not timed: {exc}", **fail)
        except Exception as exc:  # noqa: BLE001 - a failing provider must not stop the sweep
            del state
            free_memory()
            return out_recs("oom" if is_oom(exc) else "error", _error_text(exc))
        info["note"] = f"checked against mma: max|diff|/rms = {err:.2g}"
        info.update(check="pass", check_err=err, check_tol=tolerance(inp.q.dtype))
        records = []
        for mode in modes:
            rec = dict(base, mode=mode, **info)
            if mode != "fwd" and prov.no_backward(self.device):
                records.append(dict(rec, status="skipped", note=prov.no_backward(self.device)))
                continue
            out = None
            try:
                if mode == "fwd":
                    def fn():
                        with torch.no_grad():
                            return prov.forward(nograd, state)
                elif mode == "bwd":
                    out = prov.forward(inp, state)
                    fn = lambda: torch.autograd.grad(out, (inp.q, inp.k, inp.v), grad_out, retain_graph=True)  # noqa: E731
                else:
                    fn = lambda: torch.autograd.grad(prov.forward(inp, state), (inp.q, inp.k, inp.v), grad_out)  # noqa: E731
                ms = self.timer.median_ms(fn)
                mem = self.timer.peak_mib(fn)
                rec.update(status="ok", median_ms=ms, peak_mem_mib=mem,
                           tflops=tflops(mode, rec["allowed_pairs"], rec["heads_q"], rec["head_dim"], ms))
            except Exception as exc:  # noqa: BLE001
                rec.update(status="oom" if is_oom(exc) else "error", note=_error_text(exc))
            del out
            free_memory()
            records.append(rec)
        if base["provider"] in MASK_FIGURE:
            for rec in list(records):
                if rec["status"] == "ok" and rec["mode"] in ("fwd", "fwd_bwd") and rec.get("mask_ms") is not None:
                    ms = rec["median_ms"] + rec["mask_ms"]
                    records.append(dict(rec, provider=rec["provider"] + "+mask", median_ms=ms,
                                        tflops=tflops(rec["mode"], rec["allowed_pairs"], rec["heads_q"],
                                                      rec["head_dim"], ms),
                                        note="kernel time + mask build time (build once per call)"))
        del state
        return records


def _with_ratios(records: List[Dict]) -> List[Dict]:
    """vs_mma_time / vs_mma_mem: this provider's time and memory over mma's (>1: mma is better).

    `<name>+mask` figures are compared with `mma+mask`, everything else with `mma`.
    """
    ok = {(r["provider"], r["mode"]): r for r in records if r.get("status") == "ok"}
    for r in records:
        if r.get("status") != "ok":
            continue
        anchor = ok.get(("mma+mask" if r["provider"].endswith("+mask") else "mma", r["mode"]))
        if anchor is None:
            continue
        r["vs_mma_time"] = r["median_ms"] / anchor["median_ms"]
        if r.get("peak_mem_mib") and anchor.get("peak_mem_mib"):
            r["vs_mma_mem"] = r["peak_mem_mib"] / anchor["peak_mem_mib"]
    return records
