"""Seeded generators for the fuzz suite (plain `random.Random`: deterministic in CI).

A case is a dict: the ids (raw lists turned into tensors), the policies as the user would pass
them, the window and the shapes. Layouts cover modalities 0..3 and -1, padding left/right/inside
(padding ids are arbitrary: the contract ignores them), segments, packed documents, groups (the
second mutual level), sliding windows, Lq < Lk down to 1, presets and random pair sets in every
container type, GQA and odd head dims.
"""
from __future__ import annotations

import random

import torch

PRESETS = ("mma", "causal", "bidirectional_image", "prefix")
GQA = ((1, 1), (2, 1), (2, 2), (3, 1), (4, 2), (4, 1))
HEAD_DIMS = (16, 17, 24, 32, 33, 40, 64, 80)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ID_DTYPES = (torch.int64, torch.int64, torch.int32, torch.int16)


def random_policy(rng: random.Random, max_mod: int = 3):
    """(form, value): a preset name, or a random pair set to be passed as a list, tuple, set,
    frozenset, generator or list of lists (see `user_policy`)."""
    if rng.random() < 0.55:
        return "preset", rng.choice(PRESETS)
    pairs = sorted({(rng.randint(0, max_mod), rng.randint(0, max_mod)) for _ in range(rng.randint(0, 5))})
    return rng.choice(["list", "tuple", "set", "frozenset", "generator", "lists"]), pairs


def user_policy(policy):
    """The policy object as a user would pass it (a fresh generator each call)."""
    form, value = policy
    if form == "preset":
        return value
    if form == "generator":
        return (p for p in value)
    if form == "lists":
        return [list(p) for p in value]
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[form](value)


def oracle_policy(policy):
    """What the oracle takes: the preset name or the list of pairs."""
    return policy[1]


def _row(rng: random.Random, L: int, max_mod: int, style: str):
    """One batch row: modality, segment, document lists of length L (before padding ids are scrambled)."""
    mod, seg, doc = [], [], []
    s = d = 0
    while len(mod) < L:
        if style == "aki":  # text, an image run, its question (one segment), then an answer segment
            n_img, n_q, n_a = rng.randint(1, 6), rng.randint(1, 5), rng.randint(1, 4)
            mod += [0] * rng.randint(0, 2)
            mod += [rng.choice([1, 1, 2, 3])] * n_img + [0] * n_q + [0] * n_a
            seg += [s] * (len(mod) - len(seg) - n_a) + [s + 1] * n_a
            doc += [d] * (len(mod) - len(doc))
            s += 2
            d += rng.random() < 0.4
        else:  # random runs of random modalities
            run = rng.randint(1, max(1, L // 3))
            mod += [rng.randint(0, max_mod)] * run
            seg += [s] * run
            doc += [d] * run
            r = rng.random()
            s += r < 0.55
            d += r < 0.2
    return mod[:L], seg[:L], doc[:L]


def _relabel(rng: random.Random, ids: list, lo: int, hi: int, extremes=None) -> list:
    """Map the run values to distinct random values in [lo, hi) (ids need not be 0, 1, 2, ...); with
    `extremes` (the id dtype's min and max), those two values are used too."""
    vals = sorted(set(ids))
    new = rng.sample(range(lo, hi), len(vals)) if hi - lo > 4 * len(vals) else list(range(lo, lo + len(vals)))
    if extremes is not None:
        new[0], new[-1] = extremes[0], extremes[-1] if len(new) > 1 else extremes[rng.randrange(2)]
    return [dict(zip(vals, new))[x] for x in ids]


def random_ids(rng: random.Random, B: int, L: int, max_mod: int = 3):
    """(mod, seg, doc, grp) as int tensors [B, L] (seg/doc/grp may be None), and a description.
    Segments and groups are runs inside documents; groups ignore segment boundaries."""
    style = rng.choice(["aki", "runs", "runs"])
    use_seg, use_doc = rng.random() < 0.85, rng.random() < 0.6
    id_dtype = rng.choice(ID_DTYPES)
    lim = min(torch.iinfo(id_dtype).max, 1 << 20)
    mods, segs, docs, grps = [], [], [], []
    kinds = set()
    for _ in range(B):
        mod, seg, doc = _row(rng, L, max_mod, style)
        grp, g = [], 0  # groups: random runs that restart at every document boundary
        for i in range(L):
            g += i > 0 and (doc[i] != doc[i - 1] or rng.random() < 0.2)
            grp.append(g)
        if rng.random() < 0.35:  # padding: left, right, inside (single tokens or runs), or a whole row
            kind = rng.choice(["left", "right", "inside", "inside", "row"])
            kinds.add(kind)
            n = rng.randint(1, max(1, L // 2))
            if kind == "left":
                idx = range(0, n)
            elif kind == "right":
                idx = range(L - n, L)
            elif kind == "row":
                idx = range(L)
            else:
                a = rng.randrange(L)
                idx = range(a, min(L, a + rng.randint(1, 4)))
            for i in idx:
                mod[i] = -1
        ext = (torch.iinfo(id_dtype).min, torch.iinfo(id_dtype).max)
        seg, doc, grp = (_relabel(rng, x, -lim if rng.random() < 0.3 else 0, lim, ext if rng.random() < 0.15 else None)
                         for x in (seg, doc, grp))
        if rng.random() < 0.3:  # padding carries arbitrary ids (the contract ignores them)
            for i in range(L):
                if mod[i] == -1:
                    seg[i], doc[i], grp[i] = (rng.randint(*ext) for _ in range(3))
        mods.append(mod)
        segs.append(seg)
        docs.append(doc)
        grps.append(grp)
    t = lambda x: torch.tensor(x, dtype=id_dtype)  # noqa: E731
    mod = torch.tensor(mods, dtype=rng.choice([torch.int64, torch.int32, torch.int8]))
    use_grp = rng.random() < 0.4
    return (mod, t(segs) if use_seg else None, t(docs) if use_doc else None, t(grps) if use_grp else None,
            f"{style} pad={sorted(kinds)} seg={use_seg} doc={use_doc} grp={use_grp} ids={id_dtype}")


def random_case(rng: random.Random, max_L: int = 40, max_bh: int = 12, dtypes=DTYPES):
    """One case; `max_bh` bounds B * Hq (the Triton interpreter's cost grows with the programs launched)."""
    Lk = rng.choice([1, 2, 3]) if rng.random() < 0.1 else rng.randint(4, max_L)
    Lq = Lk if rng.random() < 0.55 else rng.choice([1, rng.randint(1, Lk)])
    B, (Hq, Hkv) = rng.choice([(b, h) for b in (1, 1, 2, 3) for h in GQA if b * h[0] <= max_bh])
    mod, seg, doc, grp, desc = random_ids(rng, B, Lk)
    window = None if rng.random() < 0.6 else rng.choice([1, 2, rng.randint(1, Lk + 2)])
    return dict(B=B, Hq=Hq, Hkv=Hkv, Lq=Lq, Lk=Lk, D=rng.choice(HEAD_DIMS), dtype=rng.choice(dtypes),
                mod=mod, seg=seg, doc=doc, grp=grp, policy=random_policy(rng), group_policy=random_policy(rng),
                window=window, desc=desc,
                scale=None if rng.random() < 0.7 else rng.choice([0.05, 0.3, 1.0, 2]),
                seed=rng.randrange(1 << 30))


def describe(case) -> str:
    keys = ("B", "Hq", "Hkv", "Lq", "Lk", "D", "dtype", "scale", "policy", "group_policy", "window", "desc")
    ids = "".join(f"\n{k}={None if case[k] is None else case[k].tolist()}" for k in ("mod", "seg", "doc", "grp"))
    return " ".join(f"{k}={case[k]}" for k in keys) + ids


def _as_policy(policy):
    return ("preset", policy) if isinstance(policy, str) else ("list", sorted(map(tuple, policy)))


def make_case(mod, seg=None, doc=None, policy="mma", Hq=2, Hkv=1, Lq=None, D=32, dtype=torch.float16, seed=0,
              scale=None, with_lse=None, grp=None, group_policy="bidirectional_image", window=None):
    """A case from given ids, for targeted tests that use the fuzz suite's oracle check."""
    case = dict(B=mod.shape[0], Hq=Hq, Hkv=Hkv, Lq=Lq or mod.shape[1], Lk=mod.shape[1], D=D, dtype=dtype, mod=mod,
                seg=seg, doc=doc, grp=grp, policy=_as_policy(policy), group_policy=_as_policy(group_policy),
                window=window, scale=scale, seed=seed, desc="given ids")
    if with_lse is not None:
        case["with_lse"] = with_lse
    return case
