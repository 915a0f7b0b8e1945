"""An fp64 oracle of the contract (docs/semantics.md), written from its text alone.

Nothing here imports `mma_kernels`: the preset pairs are copied from the contract's table,
the rule is evaluated by NumPy broadcasting over the raw ids (never `MMAMask.to_dense`,
`MMAMask.block`, `policy_bits` or `mma_kernels.reference`), and attention is plain dense
float64 math differentiated by autograd.

    allowed(i, j) = mod[i] != -1 and mod[j] != -1 and doc[i] == doc[j]
                    and ( (j <= i and i - j < window)
                          or (seg[i] == seg[j] and (mod[i], mod[j]) in policy)
                          or (grp[i] == grp[j] and (mod[i], mod[j]) in group_policy) )
"""
from __future__ import annotations

import numpy as np
import torch

N_MOD = 31  # modalities 0..30
ALL_PAIRS = frozenset((a, b) for a in range(N_MOD) for b in range(N_MOD))
# the contract's preset table, literally: (query modality, key modality) pairs that may look ahead
PRESET_PAIRS = {
    "mma": frozenset({(1, 0)}),
    "causal": frozenset(),
    "bidirectional_image": frozenset({(1, 1)}),
    "prefix": ALL_PAIRS,
}


def pairs_of(policy) -> frozenset:
    if isinstance(policy, str):
        return PRESET_PAIRS[policy]
    return frozenset((int(a), int(b)) for a, b in policy)


def _pair_table(pairs) -> np.ndarray:
    t = np.zeros((N_MOD, N_MOD), dtype=bool)
    for a, b in pairs:
        t[a, b] = True
    return t


def _np(x):
    return None if x is None else np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x).astype(np.int64)


def allowed(mod, seg=None, doc=None, policy="mma", q_len=None, grp=None, group_policy="bidirectional_image",
            window=None, rows=None) -> torch.Tensor:
    """bool [B, Lq, Lk]; query row r sits at absolute position Lk - Lq + r (bottom-right aligned).
    With ``rows=(r0, r1)`` only query rows r0..r1-1 are computed: [B, r1 - r0, Lk].

    Defaults as in the contract: no segments = every token its own segment, no documents = one
    document, no groups = no group term, no window = unbounded causal reach."""
    mod = _np(mod)
    B, L = mod.shape
    q_len = L if q_len is None else q_len
    r0, r1 = rows if rows is not None else (0, q_len)
    a0, a1 = L - q_len + r0, L - q_len + r1  # absolute positions of the rows computed
    seg = np.broadcast_to(np.arange(L), (B, L)) if seg is None else _np(seg)
    doc = np.zeros((B, L), dtype=np.int64) if doc is None else _np(doc)
    i = np.arange(a0, a1)[None, :, None]
    j = np.arange(L)[None, None, :]
    qi = lambda a: a[:, a0:a1, None]  # noqa: E731  query-side values [B, rows, 1]
    kj = lambda a: a[:, None, :]  # noqa: E731  key-side values [B, 1, Lk]
    valid = mod != -1
    mq, mk = np.clip(qi(mod), 0, None), np.clip(kj(mod), 0, None)
    causal = j <= i
    if window is not None:
        causal = causal & (i - j < window)
    ahead = (qi(seg) == kj(seg)) & _pair_table(pairs_of(policy))[mq, mk]
    if grp is not None:
        grp = _np(grp)
        ahead = ahead | ((qi(grp) == kj(grp)) & _pair_table(pairs_of(group_policy))[mq, mk])
    ok = qi(valid) & kj(valid) & (qi(doc) == kj(doc)) & (causal | ahead)
    return torch.from_numpy(np.ascontiguousarray(ok))


def attention64(q, k, v, ok: torch.Tensor, scale: float):
    """(out, lse) in float64, differentiable. `ok` [B, Lq, Lk]; GQA by repeating kv heads.
    Rows with no allowed key give out 0 and lse -inf (zero gradient)."""
    G = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
    ok = ok[:, None].to(q.device)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    s = torch.where(ok, s, 0.0)  # masked entries never enter the arithmetic
    m = torch.where(ok, s, float("-inf")).amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, 0.0)
    e = torch.where(ok, torch.exp(s - m), 0.0)
    den = e.sum(-1, keepdim=True)
    has = den > 0
    out = torch.matmul(e, v) / torch.where(has, den, 1.0)
    lse = torch.where(has, torch.log(torch.where(has, den, 1.0)) + m, float("-inf")).squeeze(-1)
    return out, lse


def attention64_with_grads(q, k, v, ok, scale, dout, dlse=None, chunk=None):
    """Oracle (out, lse, dq, dk, dv) for the loss sum(out * dout) + sum(lse * dlse), all float64.

    Query rows are independent, so with `chunk` the rows are processed `chunk` at a time
    (memory O(chunk * Lk), for GPU sizes) and dk, dv are summed over the chunks. `ok` is the
    [B, Lq, Lk] mask, or a function (r0, r1) -> the mask of query rows r0..r1-1."""
    Lq = q.shape[2]
    chunk = chunk or Lq
    k64, v64 = (t.detach().double().requires_grad_() for t in (k, v))
    outs, lses, dqs = [], [], []
    dk = torch.zeros_like(k64)
    dv = torch.zeros_like(v64)
    for r0 in range(0, Lq, chunk):
        r1 = min(Lq, r0 + chunk)
        qc = q[:, :, r0:r1].detach().double().requires_grad_()
        out, lse = attention64(qc, k64, v64, ok(r0, r1) if callable(ok) else ok[:, r0:r1], scale)
        loss = (out * dout[:, :, r0:r1].double()).sum()
        if dlse is not None:
            loss = loss + (torch.where(torch.isfinite(lse), lse, 0.0) * dlse[:, :, r0:r1].double()).sum()
        gq, gk, gv = torch.autograd.grad(loss, (qc, k64, v64))
        outs.append(out.detach())
        lses.append(lse.detach())
        dqs.append(gq)
        dk += gk
        dv += gv
    return torch.cat(outs, 2), torch.cat(lses, 2), torch.cat(dqs, 2), dk, dv
