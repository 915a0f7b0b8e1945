"""Shared test helpers: layouts, an independent rule implementation, and the flash-attn tolerance rule."""
from __future__ import annotations

import json
import os
import random

import torch

from mma_kernels.policy import policy_bits

TEXT, IMAGE, PAD = 0, 1, -1


# ----------------------------------------------------------------------------- layouts
def _sample(n: int, images: int, turns: int, seg0: int):
    """One AKI-style sample of exactly n tokens: system text, then per turn a user segment
    (each image followed by a newline token, then the question) and an answer segment."""
    sys_len = max(1, n // 12)
    mod, seg, s = [TEXT] * sys_len, [seg0] * sys_len, seg0
    rest = n - sys_len
    for t in range(turns):
        tl = rest // turns + (1 if t < rest % turns else 0)
        answer = tl // 4
        user = tl - answer
        img = max(1, (user - images) // (images + 1)) if images and user > 2 * images else 0
        for _ in range(images if img else 0):
            mod += [IMAGE] * img + [TEXT]
            seg += [s] * (img + 1)
        question = tl - answer - (img + 1) * (images if img else 0)
        mod += [TEXT] * (question + answer)
        seg += [s] * question + [s + 1] * answer
        s += 2
    assert len(mod) == n, (len(mod), n)
    return mod, seg, s


LAYOUTS = ("single_image", "multi_image", "multi_turn", "packed", "left_pad", "right_pad", "text_only", "three_modal")


def make_layout(name: str, B: int, L: int, seed: int = 0):
    """(modality_ids, segment_ids, document_ids) int64 [B, L] for a named layout; rows differ."""
    rng = random.Random(seed)
    mods, segs, docs = [], [], []
    for b in range(B):
        pad = 0
        if name in ("left_pad", "right_pad"):
            pad = min(L - 1, (b + 1) * max(1, L // 7))
        n = L - pad
        if name == "packed":
            cuts = sorted(rng.sample(range(1, n), min(n - 1, 2 + b))) if n > 3 else []
            bounds = [0] + cuts + [n]
            mod, seg, doc, s = [], [], [], 0
            for d in range(len(bounds) - 1):
                m, sg, s = _sample(bounds[d + 1] - bounds[d], 1, 1, s)
                mod += m
                seg += sg
                doc += [d] * len(m)
        else:
            images = {"multi_image": 2, "text_only": 0}.get(name, 1)
            turns = 2 if name == "multi_turn" else 1
            if name == "text_only" or n < 4:
                mod, seg = [TEXT] * n, [0] * n
            else:
                mod, seg, _ = _sample(n, images, turns, 0)
            if name == "three_modal":
                mod = [2 if (m == TEXT and 0 < i % 5 < 2) else m for i, m in enumerate(mod)]
            doc = [0] * n
        if name == "left_pad":
            mod, seg, doc = [PAD] * pad + mod, [seg[0]] * pad + seg, [doc[0]] * pad + doc
        elif name == "right_pad":
            mod, seg, doc = mod + [PAD] * pad, seg + [seg[-1]] * pad, doc + [doc[-1]] * pad
        mods.append(mod)
        segs.append(seg)
        docs.append(doc)
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return t(mods), t(segs), t(docs)


def random_layout(rng: random.Random, B: int, L: int, max_mod: int = 2):
    """Random valid ids: random runs of documents, segments inside them, modalities, padding at the edges."""
    mods, segs, docs = [], [], []
    for _ in range(B):
        lpad = rng.randrange(0, max(1, L // 4)) if rng.random() < 0.3 else 0
        rpad = rng.randrange(0, max(1, L // 4)) if rng.random() < 0.3 else 0
        n = max(1, L - lpad - rpad)
        lpad = min(lpad, L - n)
        rpad = L - n - lpad
        mod, seg, doc = [], [], []
        s, d = 0, 0
        while len(mod) < n:
            run = rng.randint(1, max(1, n // 3))
            m = rng.randint(0, max_mod)
            mod += [m] * run
            seg += [s] * run
            doc += [d] * run
            r = rng.random()
            if r < 0.4:
                s += 1
            elif r < 0.55:
                s += 1
                d += 1
        mod, seg, doc = mod[:n], seg[:n], doc[:n]
        mods.append([PAD] * lpad + mod + [PAD] * rpad)
        segs.append([seg[0]] * lpad + seg + [seg[-1]] * rpad)
        docs.append([doc[0]] * lpad + doc + [doc[-1]] * rpad)
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return t(mods), t(segs), t(docs)


def rule_dense(mod, seg, doc, policy, q_len=None) -> torch.Tensor:
    """The contract's rule written literally, one (i, j) at a time. Independent of MMAMask."""
    B, L = mod.shape
    q_len = L if q_len is None else q_len
    bits = policy_bits(policy).tolist()
    seg = torch.arange(L).expand(B, L) if seg is None else seg
    doc = torch.zeros_like(mod) if doc is None else doc
    out = torch.zeros(B, q_len, L, dtype=torch.bool)
    M, S, D = mod.tolist(), seg.tolist(), doc.tolist()
    for b in range(B):
        for r in range(q_len):
            i = L - q_len + r
            for j in range(L):
                if M[b][i] == -1 or M[b][j] == -1 or D[b][i] != D[b][j]:
                    continue
                pair = (bits[M[b][i]] >> M[b][j]) & 1
                out[b, r, j] = j <= i or (S[b][i] == S[b][j] and pair == 1)
    return out


# ----------------------------------------------------------------------------- tolerance rule
def plain_attention(q, k, v, allowed, scale):
    """Dense attention in the inputs' own dtype: 'plain PyTorch' for the flash-attn tolerance rule."""
    G = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(G, dim=1)
    v = v.repeat_interleave(G, dim=1)
    s = torch.matmul(q * scale, k.transpose(-1, -2))
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    lse = torch.logsumexp(s.float(), dim=-1)
    p = torch.softmax(s, dim=-1)
    p = torch.where(allowed[:, None].any(-1, keepdim=True), p, torch.zeros_like(p))
    return torch.matmul(p.to(v.dtype), v), lse


FACTOR = {"out": 2.0, "lse": 2.0, "dq": 2.0, "dk": 2.0, "dv": 2.0}


def _record(dtype, what, ratio):
    d = os.environ.get("MMA_RATIO_DIR")
    if not d:
        return
    wid = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(d, f"ratios-{wid}.jsonl"), "a") as f:
        f.write(json.dumps({"dtype": str(dtype).replace("torch.", ""), "what": what, "ratio": ratio}) + "\n")


def record_count(prop: str, backend: str, cases: int, mismatches: int):
    """Fuzz counts per property and backend, summed over xdist workers and printed at the end (conftest.py)."""
    d = os.environ.get("MMA_RATIO_DIR")
    if not d:
        return
    wid = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(d, f"fuzz-{wid}.jsonl"), "a") as f:
        f.write(json.dumps({"property": prop, "backend": backend, "cases": cases, "mismatches": mismatches}) + "\n")


def fp32_floor(ref64, dtype) -> float:
    """fp32 only: 32 units in the last place of the largest exact value (32 * eps32 * max|ref|, a relative 4e-6).
    "2x plain PyTorch's error" alone depends on the CPU's BLAS kernels, not on our arithmetic: on this AMD EPYC
    the same seeded fuzz cases (tests/test_fuzz.py triton-1/3, torch-0/1) fail at commit 3c90af0 that passed on the
    earlier machines, and pass with OPENBLAS_CORETYPE=Sandybridge (the interpreter's dots are numpy's sgemm).
    0 for fp16/bf16, whose rule stays exactly flash-attn's."""
    if dtype != torch.float32:
        return 0.0
    fin = torch.isfinite(ref64)
    return 32 * torch.finfo(torch.float32).eps * (ref64[fin].abs().max().item() if fin.any() else 0.0)


def assert_rule(what: str, got, ref64, plain, dtype):
    """The flash-attn rule, as in FlashAttention-3's tests:
    |got - ref64| <= FACTOR * |plain - ref64| + |round_to_dtype(ref64) - ref64| (+1e-6),
    maxima over finite entries. The last term is the error of merely storing the exact
    result in `dtype` (lse is returned in fp32, so its term uses fp32)."""
    got, plain = got.double(), plain.double()
    fin = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(got), fin), f"{what}: non-finite entries differ from the reference"
    if not fin.any():
        return
    store = torch.float32 if what == "lse" else dtype
    err = (got - ref64)[fin].abs().max().item()
    perr = (plain - ref64)[fin].abs().max().item()
    rounding = (ref64[fin].to(store).double() - ref64[fin]).abs().max().item()
    bound = FACTOR[what] * perr + rounding + 1e-6 + fp32_floor(ref64, dtype)
    _record(dtype, what, err / bound)
    assert err <= bound, (f"{what}: max error {err:.3e} > {FACTOR[what]} x plain-PyTorch error {perr:.3e} "
                          f"+ {rounding:.1e} (rounding of the exact result to {store})")


def make_qkv(B, Hq, Hkv, Lq, Lk, D, dtype, seed=0, noncontiguous=False):
    g = torch.Generator().manual_seed(seed)
    if noncontiguous:  # [B, L, H, D] storage viewed as [B, H, L, D], like a fused projection
        q = torch.randn(B, Lq, Hq, D, generator=g).to(dtype).transpose(1, 2)
        k = torch.randn(B, Lk, Hkv, D, generator=g).to(dtype).transpose(1, 2)
        v = torch.randn(B, Lk, Hkv, D, generator=g).to(dtype).transpose(1, 2)
    else:
        q = torch.randn(B, Hq, Lq, D, generator=g).to(dtype)
        k = torch.randn(B, Hkv, Lk, D, generator=g).to(dtype)
        v = torch.randn(B, Hkv, Lk, D, generator=g).to(dtype)
    return [t.requires_grad_() for t in (q, k, v)]
