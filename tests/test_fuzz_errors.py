"""Random malformed inputs: each must raise ValueError/TypeError naming the argument, raised by the
package's own checks (never an error from inside torch or triton), before any kernel launch."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from helpers import record_count
from mma_kernels import MMAMask, mma_attention
from mma_kernels.ops import torch_ops, triton_ops


def _ids(rng, B, L):
    mod = torch.tensor([[rng.choice([-1, 0, 0, 1, 2]) for _ in range(L)] for _ in range(B)])
    seg = torch.arange(L).div(max(1, L // 3), rounding_mode="floor").expand(B, L).clone()
    return mod, seg, torch.zeros(B, L, dtype=torch.long)


def _not_tensor(rng, t, none_valid=False):
    return rng.choice([t.tolist(), t.numpy(), tuple(t.tolist()), 3, "ids"] + ([] if none_valid else [None]))


def mask_case(rng):
    """(kind, kwargs for MMAMask, argument name the error must contain)."""
    B, L = rng.randint(1, 3), rng.randint(2, 12)
    mod, seg, doc = _ids(rng, B, L)
    kw = dict(modality_ids=mod, segment_ids=seg, document_ids=doc, group_ids=seg.clone())
    name = rng.choice(["modality_ids", "segment_ids", "document_ids", "group_ids"])
    kind = rng.choice(["type", "dtype", "rank", "shape", "range", "runs", "nesting", "policy", "device", "empty"])
    if kind == "type":
        kw[name] = _not_tensor(rng, kw[name], none_valid=name != "modality_ids")
    elif kind == "dtype":
        kw[name] = kw[name].to(rng.choice([torch.float32, torch.float16, torch.bool, torch.complex64]))
    elif kind == "rank":
        kw[name] = kw[name][0] if rng.random() < 0.5 else kw[name][:, None]
    elif kind == "shape" and name != "modality_ids":
        kw[name] = torch.zeros(*rng.choice([(B, L + 1), (B, L - 1), (B + 1, L), (B, L, 1)]), dtype=torch.long)
    elif kind == "range" or (kind == "shape" and name == "modality_ids"):
        name = "modality_ids"
        mod = mod.clone()
        mod[rng.randrange(B), rng.randrange(L)] = rng.choice([-2, -7, -1000, 31, 32, 1000, 1 << 40])
        kw[name] = mod
    elif kind == "runs":  # a value that comes back after another run
        name = rng.choice(["segment_ids", "document_ids", "group_ids"])
        L = max(L, 3)
        ids = torch.zeros(B, L, dtype=torch.long)
        a = rng.randint(1, L - 2)
        ids[rng.randrange(B), a:rng.randint(a + 1, L - 1)] = 5
        kw = dict(modality_ids=torch.zeros(B, L, dtype=torch.long), **{name: ids})
    elif kind == "nesting":  # one segment (or group) across two documents
        name = rng.choice(["segment_ids", "group_ids"])
        doc = torch.zeros(B, L, dtype=torch.long)
        doc[rng.randrange(B), rng.randint(1, L - 1):] = 1
        kw = {"modality_ids": torch.zeros(B, L, dtype=torch.long), name: torch.zeros(B, L, dtype=torch.long),
              "document_ids": doc}
    elif kind == "policy":
        name = rng.choice(["policy", "group_policy"])
        kw[name] = rng.choice(["mutual", "MMA", "", "causal ", 5, 2.5, None, object(), [(1, 31)], [(-1, 0)],
                                   [(0, 100)], [(1,)], [(1, 2, 3)], [(1.0, 0)], [("1", 0)], [(True, 0)], [1, 0],
                                   {(0, 1): 1, 2: 3}])
    elif kind == "device":  # ids on the meta device (no values), or beside ids on another device
        kw[name] = kw[name].to("meta")
    else:  # empty sequence
        name = "modality_ids"
        kw = dict(modality_ids=torch.zeros(B, 0, dtype=torch.long))
    return kind, kw, name


def qkv_case(rng):
    """(kind, args, kwargs for mma_attention, argument name)."""
    B, Hkv, G, L, D = rng.randint(1, 2), rng.randint(1, 2), rng.randint(1, 2), rng.randint(2, 9), rng.choice([16, 32])
    Lq = rng.randint(1, L)
    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    mod, seg, _ = _ids(rng, B, L)
    mask = MMAMask(mod, seg)
    q = torch.randn(B, Hkv * G, Lq, D).to(dtype)
    k, v = torch.randn(B, Hkv, L, D).to(dtype), torch.randn(B, Hkv, L, D).to(dtype)
    args = dict(q=q, k=k, v=v, mask=mask)
    kwargs = {}
    kind = rng.choice(["type", "rank", "dtype", "mixed", "batch", "dim", "heads", "length", "mask", "scale", "backend",
                       "window"])
    name = rng.choice(["q", "k", "v"])
    if kind == "type":
        args[name] = _not_tensor(rng, args[name].float())
    elif kind == "rank":
        t = args[name]
        args[name] = t[0] if rng.random() < 0.5 else t[..., None]
    elif kind == "dtype":
        args = {n: t.to(rng.choice([torch.float64, torch.int32, torch.bool, torch.complex64])) if n in "qkv" else t
                for n, t in args.items()}
        name = "q"
    elif kind == "mixed":
        name = rng.choice(["k", "v"])
        args[name] = args[name].to(torch.float32 if dtype != torch.float32 else torch.float16)
    elif kind == "batch":
        name = rng.choice(["k", "v"])
        args["k"] = args["v"] = torch.randn(B + 1, Hkv, L, D).to(dtype)
        name = "k"
    elif kind == "dim":
        bad = rng.choice([1, 8, 15, 257, 320])
        if rng.random() < 0.5:  # q and k disagree
            args["k"] = args["v"] = torch.randn(B, Hkv, L, D + 16).to(dtype)
            name = "k"
        else:
            args = dict(q=torch.randn(B, Hkv * G, Lq, bad).to(dtype), k=torch.randn(B, Hkv, L, bad).to(dtype),
                        v=torch.randn(B, Hkv, L, bad).to(dtype), mask=mask)
            name = "q"
    elif kind == "heads":
        name = "k"
        hq = rng.choice([h for h in (3, 5, 7) if h % (Hkv + 1)])
        args["q"] = torch.randn(B, hq, Lq, D).to(dtype)
        args["k"] = args["v"] = torch.randn(B, Hkv + 1, L, D).to(dtype)
    elif kind == "length":
        name = "q"
        args["q"] = torch.randn(B, Hkv * G, rng.choice([0, L + 1, L + 5]), D).to(dtype)
    elif kind == "mask":
        name = "mask"
        args["mask"] = rng.choice([mod, None, "mma", MMAMask(torch.zeros(B, L + 1, dtype=torch.long)),
                                   MMAMask(torch.zeros(B + 1, L, dtype=torch.long))])
    elif kind == "scale":
        name = "scale"
        kwargs["scale"] = rng.choice([-1.0, 0.0, -0.0, float("nan"), float("inf"), float("-inf"), "0.5", [0.5], 1j,
                                      torch.ones(2), torch.tensor(-0.5), torch.tensor(float("inf")), -3, True, False,
                                      np.float32(-0.25), np.float64("nan"), np.int64(0)])
    elif kind == "window":
        name = "window"
        kwargs["window"] = rng.choice([0, -1, -100, 1.5, 2.0, True, False, "3", [3], torch.ones(2)])
    else:
        name = "backend"
        kwargs["backend"] = rng.choice(["cuda", "Triton", "", None, 0, "flash"])
    return kind, args, kwargs, name


def _check_raised(excinfo, name):
    msg = str(excinfo.value)
    assert name in msg, f"the message does not name {name!r}: {msg}"
    where = excinfo.traceback[-1].path
    assert "mma_kernels" in str(where), f"raised from {where}, not by the package's checks: {msg}"


def _run(kind_of, cases, launch_guard):
    failures = []
    for n, (kind, call, name) in enumerate(cases):
        try:
            with pytest.raises((ValueError, TypeError)) as e:
                call()
            _check_raised(e, name)
        except BaseException as err:  # noqa: BLE001 - any other outcome is a mismatch
            failures.append(f"case {n} ({kind}, expects {name!r}): {type(err).__name__}: {err}"[:400])
    assert launch_guard() == 0, "a kernel ran for a malformed input"
    record_count(kind_of, "both", len(cases), len(failures))
    assert not failures, f"{len(failures)}/{len(cases)} malformed inputs mishandled:\n" + "\n".join(failures[:5])


@pytest.fixture
def no_launch(monkeypatch):
    """Counts kernel launches and CPU-path runs (there must be none)."""
    calls = []
    monkeypatch.setattr(triton_ops, "_launch", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(torch_ops.TorchMMAttention, "forward", staticmethod(lambda *a, **k: calls.append(a)))
    return lambda: len(calls)


def test_malformed_masks(no_launch):
    rng = random.Random("malformed-masks")
    cases = []
    for _ in range(120):
        kind, kw, name = mask_case(rng)
        cases.append((kind, lambda kw=kw: MMAMask(**kw), name))
    _run("malformed MMAMask", cases, no_launch)


def test_malformed_attention_inputs(no_launch):
    rng = random.Random("malformed-attention")
    cases = []
    for _ in range(120):
        kind, args, kwargs, name = qkv_case(rng)
        backend = kwargs.pop("backend", rng.choice(["torch", "triton", "auto"]))
        cases.append((kind, lambda a=args, kw=kwargs, b=backend: mma_attention(**a, **kw, backend=b), name))
    _run("malformed mma_attention", cases, no_launch)
