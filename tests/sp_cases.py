"""Shared by the sequence-parallel tests: deterministic cases (the same inputs on every rank) and a spawner.

A case is built identically by every process from its seed: the whole row's ids, q/k/v and the upstream
gradients. Each rank feeds its plan shard to the op; the parent assembles the shards and compares them with
one process's `mma_attention` and the fp64 oracle on the whole row.
"""
from __future__ import annotations

import os
import tempfile
import traceback
from dataclasses import dataclass
from typing import Optional

import torch

from helpers import make_layout


@dataclass(frozen=True)
class Case:
    name: str
    layout: str
    B: int
    Hq: int
    Hkv: int
    L: int
    D: int = 16
    window: Optional[int] = None
    groups: bool = False
    backend: str = "torch"
    seed: int = 0

    def ids(self):
        if self.layout == "packed_pad":  # packed documents with left and right padding
            mod, seg, doc = make_layout("packed", self.B, self.L, seed=self.seed)
            mod[:, :3] = -1
            mod[:, -5:] = -1
        else:
            mod, seg, doc = make_layout(self.layout, self.B, self.L, seed=self.seed)
        grp = None
        if self.groups:  # one group per image run (Gemma 3 style), other tokens their own group
            B, L = mod.shape
            img = mod == 1
            start = img & ~torch.cat([torch.zeros(B, 1, dtype=torch.bool), img[:, :-1]], 1)
            grp = torch.where(img, -start.long().cumsum(1), torch.arange(L).expand(B, L))
        return mod, seg, doc, grp

    def mask(self):
        from mma_kernels import MMAMask

        mod, seg, doc, grp = self.ids()
        return MMAMask(mod, seg, doc, policy="mma", group_ids=grp)

    def tensors(self):
        g = torch.Generator().manual_seed(1000 + self.seed)
        B, Hq, Hkv, L, D = self.B, self.Hq, self.Hkv, self.L, self.D
        q = torch.randn(B, Hq, L, D, generator=g)
        k = torch.randn(B, Hkv, L, D, generator=g)
        v = torch.randn(B, Hkv, L, D, generator=g)
        dout = torch.randn(B, Hq, L, D, generator=g)
        dlse = torch.randn(B, Hq, L, generator=g)
        return q, k, v, dout, dlse


def run_sharded(op, case: Case, plan, rank: int, group=None):
    """This rank's (out, lse, dq, dk, dv) shards of the op on the case (default scale D ** -0.5)."""
    scale = case.D ** -0.5
    pos = plan.positions(rank)
    q, k, v, dout, dlse = (t.index_select(2, pos) for t in case.tensors())
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = op(q, k, v, case.mask(), plan, group, scale=scale, window=case.window, backend=case.backend,
                  return_lse=True)
    loss = (out * dout).sum() + torch.where(torch.isfinite(lse), lse * dlse, 0.0).sum()
    loss.backward()
    return [t.detach() for t in (out, lse, q.grad, k.grad, v.grad)]


def _entry(rank, world, init_file, out_path, fn, args):
    import datetime
    import gc

    import torch.distributed as dist

    torch.set_num_threads(1)
    # a bounded timeout: a broken op fails the test in minutes instead of hanging CI for gloo's default 30
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=180))
    result = None
    try:
        result = fn(rank, world, *args)
    except BaseException:  # reported to the parent, which fails the test with it
        result = {"error": traceback.format_exc()}
    finally:
        torch.save(result, f"{out_path}.{rank}")
        # deterministic teardown (the SIGABRT flake of tests/test_distributed.py): free everything that may
        # hold the process groups (autograd graphs, saved contexts) while the interpreter is fully alive,
        # and let no rank tear down while a peer still communicates
        result = None
        gc.collect()
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def spawn(fn, world: int, *args):
    """Run fn(rank, world, *args) on `world` gloo processes (file:// rendezvous: no ports); returns each rank's
    result. `fn` must be importable (module level) and deterministic."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        init_file = os.path.join(d, "init")
        out = os.path.join(d, "out")
        mp.spawn(_entry, args=(world, init_file, out, fn, args), nprocs=world, join=True)
        results = [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]
    for r, res in enumerate(results):
        if isinstance(res, dict) and "error" in res:
            raise AssertionError(f"rank {r} failed:\n{res['error']}")
    return results
