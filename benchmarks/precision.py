"""Gradient precision of `mma_attention` against plain PyTorch, per dtype, backend and delta option.

For each seeded case (random layouts with padding, packed documents, short rows, GQA, sharp
softmaxes at scale 1.0, and the issue-13 example: L=2 causal D=64 scale 1.0 seed 1), the error of
out/dq/dk/dv against a float64 evaluation of the rule is divided by plain PyTorch's error in the
same dtype (dense softmax attention, autograd). A ratio <= 3 meets issue 13's bar. fp16/bf16 run
with each `triton_ops.HALF_DELTA` option ("out": rowsum(dO * O) from the rounded output, the
default; "fp32_out": from the unrounded fp32 output; "exact": rowsum(P * dP) in the dQ kernel).
fp32 always uses the exact delta and softmax-style p = exp(s - max) / sum.

Without CUDA the Triton kernels run through the interpreter (numerics of the kernel code; a GPU's
dot accumulation order may differ in the last bits).

    python -m benchmarks.precision [--cases 60] [--out benchmarks/results/precision/<name>.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

from mma_kernels import MMAMask, mma_attention  # noqa: E402
from mma_kernels.ops import triton_ops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WHAT = ("out", "dq", "dk", "dv")


def random_ids(rng: random.Random, B: int, L: int):
    """Random runs of modalities in segments and documents (short documents included), edge and
    inner padding."""
    mods, segs, docs = [], [], []
    for _ in range(B):
        mod, seg, doc, s, d = [], [], [], 0, 0
        while len(mod) < L:
            run = rng.randint(1, max(1, L // rng.choice([2, 4, 8])))
            mod += [rng.choice([0, 0, 1, 2])] * run
            seg += [s] * run
            doc += [d] * run
            s += 1
            d += rng.random() < 0.4
        mod, seg, doc = mod[:L], seg[:L], doc[:L]
        for j in range(L):
            if rng.random() < 0.08:
                mod[j] = -1
        mods.append(mod)
        segs.append(seg)
        docs.append(doc)
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return t(mods), t(segs), t(docs)


def cases(n: int, seed: int = 0):
    yield dict(name="issue13_L2_causal_D64_scale1", ids=(torch.zeros(1, 2, dtype=torch.long), None, None),
               policy="causal", H=(1, 1), Lq=2, D=64, scale=1.0, seed=1)
    rng = random.Random(seed)
    for i in range(n):
        L = rng.randint(2, 80)
        yield dict(name=f"random{i}", ids=random_ids(rng, rng.randint(1, 2), L),
                   policy=rng.choice(["mma", "causal", "bidirectional_image", "prefix"]),
                   H=rng.choice([(1, 1), (2, 1), (4, 2)]), Lq=L if rng.random() < 0.6 else rng.randint(1, L),
                   D=rng.choice([16, 32, 64]), scale=rng.choice([None, 1.0]), seed=i)


def errors(case, backend: str, dtype):
    mod, seg, doc = case["ids"]
    mask = MMAMask(mod, seg, doc, policy=case["policy"])
    B, Lk = mod.shape
    Hq, Hkv = case["H"]
    Lq, D = case["Lq"], case["D"]
    scale = case["scale"] if case["scale"] is not None else D ** -0.5
    g = torch.Generator().manual_seed(case["seed"])
    if case["name"].startswith("issue13"):  # q, k, v, dO drawn in that order, as in the issue
        q, k, v, do = (torch.randn(1, 1, 2, 64, generator=g) for _ in range(4))
    else:
        q, k, v, do = (torch.randn(B, H, L, D, generator=g) for H, L in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk), (Hq, Lq)))
    q, k, v, do = (t.to(dtype) for t in (q, k, v, do))
    allowed = mask.to_dense(Lq)[:, None]
    G = Hq // Hkv

    def dense(q, k, v):
        s = (q * scale) @ k.repeat_interleave(G, 1).transpose(-1, -2)
        s = s.masked_fill(~allowed, float("-inf"))
        p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
        return p @ v.repeat_interleave(G, 1)

    def grads(fn, dt):
        xs = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        out = fn(*xs)
        return (out, *torch.autograd.grad(out, xs, do.to(dt)))

    ref = grads(dense, torch.float64)
    plain = grads(dense, dtype)
    got = grads(lambda q, k, v: mma_attention(q, k, v, mask, scale=scale, backend=backend), dtype)
    res = {}
    for w, a, p, r in zip(WHAT, got, plain, ref):
        e = (a.double() - r).abs().max().item() if r.numel() else 0.0
        pe = (p.double() - r).abs().max().item() if r.numel() else 0.0
        res[w] = (e, pe)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="triton,torch")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    ap.add_argument("--delta-options", default=None,
                    help="comma list of HALF_DELTA options to run for every dtype (default: all three for Triton "
                         "fp16/bf16, 'exact' elsewhere, which is what the code does); also a label for runs of older code")
    ap.add_argument("--out", default=None, help="write the raw records and the summary as JSON here")
    ap.add_argument("--label", default="", help="free text stored with the results (e.g. which commit ran)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    all_cases = list(cases(a.cases, a.seed))
    records, summary = [], []
    for backend in a.backends.split(","):
        for dname in a.dtypes.split(","):
            dtype = DTYPES[dname]
            if a.delta_options:
                options = a.delta_options.split(",")
            elif dtype == torch.float32 or backend == "torch":
                options = ["exact"]
            else:
                options = ["out", "fp32_out", "exact"]
            for opt in options:
                triton_ops.HALF_DELTA = opt if dtype != torch.float32 else "out"
                worst = {w: (0.0, 0.0, 0.0, "") for w in WHAT}  # ratio, err, plain err, case
                over = {w: 0 for w in WHAT}
                for c in all_cases:
                    for w, (e, pe) in errors(c, backend, dtype).items():
                        ratio = e / max(pe, 1e-30) if e > 0 else 0.0
                        records.append(dict(backend=backend, dtype=dname, delta=opt, case=c["name"], what=w,
                                            err=e, plain_err=pe))
                        over[w] += ratio > 3
                        if ratio > worst[w][0]:
                            worst[w] = (ratio, e, pe, c["name"])
                for w in WHAT:
                    r, e, pe, name = worst[w]
                    summary.append(dict(backend=backend, dtype=dname, delta=opt, what=w, worst_ratio=round(r, 3),
                                        err=e, plain_err=pe, case=name, cases_over_3x=over[w],
                                        cases=len(all_cases)))
                    print(f"{backend:6s} {dname:4s} delta={opt:8s} {w:3s}: worst err/plain {r:7.2f} "
                          f"({e:.2e} vs {pe:.2e}, {name}); over 3x in {over[w]}/{len(all_cases)} cases", flush=True)
    triton_ops.HALF_DELTA = "out"
    if a.out:
        meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                    device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (TRITON_INTERPRET=1)",
                    command="python -m benchmarks.precision " + " ".join(argv if argv is not None else sys.argv[1:]),
                    label=a.label)
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(dict(meta=meta, summary=summary, records=records), f, indent=1)


if __name__ == "__main__":
    main()
