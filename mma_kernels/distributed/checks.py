"""Input checks of the sequence-parallel ops, agreed across ranks before any data moves (no hang).

Every rank runs the local checks without raising, then all ranks exchange one small int64 row (their
verdict, the mask's fingerprint, the plan's hash and the shapes) with one `all_gather`; then every rank
raises the same kind of error if any rank failed or if the ranks disagree. A rank whose own input is bad
raises its own message (naming the argument and the value); the others name the argument and that rank.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import torch
import torch.distributed as dist

from ..mask import MMAMask
from ..validation import MAX_HEAD_DIM, MIN_HEAD_DIM, SUPPORTED_DTYPES, check_scale, check_window
from .plan import ShardPlan, mask_fingerprint

# the argument each failure names (index + 1 is the code exchanged between ranks)
_ARGS = ("plan", "mask", "q", "k", "v", "scale", "window", "backend", "heads", "return_lse")
MMA_KWARGS = ("scale", "return_lse", "backend", "window")


def plan_hash(plan: ShardPlan) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((plan.world_size, plan.seq_len, plan.chunk, plan.fingerprint, plan.window)).encode())
    h.update(plan.assignment.numpy().tobytes())
    return int.from_bytes(h.digest(), "little") & ((1 << 62) - 1)


class _Bad(Exception):
    def __init__(self, arg: str, exc: Exception):
        super().__init__(str(exc))
        self.arg, self.exc = arg, exc


def _local(op: str, q, k, v, mask, plan, world: int, kwargs: dict, heads_world: int = 1) -> None:
    def fail(arg, msg, cls=ValueError):
        raise _Bad(arg, cls(msg))

    for key in kwargs:
        if key not in MMA_KWARGS:
            fail("backend", f"{key}: not an argument of {op} (mma_attention keywords: {', '.join(MMA_KWARGS)})",
                 TypeError)
    if not isinstance(plan, ShardPlan):
        fail("plan", f"plan: expected a ShardPlan (mma_kernels.distributed.shard_plan), got {type(plan).__name__}",
             TypeError)
    if plan.world_size != world:
        fail("plan", f"plan: built for world_size={plan.world_size}, but the process group has {world} ranks")
    if not isinstance(mask, MMAMask):
        fail("mask", f"mask: expected an MMAMask of the whole row, got {type(mask).__name__}", TypeError)
    if mask.seq_len != plan.seq_len:
        fail("mask", f"mask: covers {mask.seq_len} positions, but the plan's row has {plan.seq_len}; the mask must "
                     f"cover the whole row (every rank builds it from the whole row's ids), not a shard")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            fail(name, f"{name}: expected a torch.Tensor, got {type(t).__name__}", TypeError)
        if t.dim() != 4:
            fail(name, f"{name}: expected rank 4 [B, H, L/P, D], got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            fail(name, f"{name}: dtype {t.dtype} is not supported; use float16, bfloat16 or float32", TypeError)
        if t.shape[2] != plan.shard_len:
            fail(name, f"{name}: holds {t.shape[2]} positions, but each rank's shard has {plan.shard_len} "
                       f"(= {plan.seq_len} / {plan.world_size}, plan.positions(rank)); shards must be equal")
        if t.shape[0] != mask.batch_size:
            fail(name, f"{name}: batch size {t.shape[0]} differs from the mask's {mask.batch_size}")
        if t.dtype != q.dtype:
            fail(name, f"{name}: dtype {t.dtype} differs from q's {q.dtype}", TypeError)
        if t.device != q.device:
            fail(name, f"{name}: device {t.device} differs from q's {q.device}")
    if k.shape != v.shape:
        fail("v", f"k, v: shapes differ, k {tuple(k.shape)} vs v {tuple(v.shape)}")
    if k.shape[3] != q.shape[3]:
        fail("k", f"k: head dim {k.shape[3]} differs from q's {q.shape[3]}")
    if not MIN_HEAD_DIM <= q.shape[3] <= MAX_HEAD_DIM:
        fail("q", f"q: head dim {q.shape[3]} is out of range {MIN_HEAD_DIM}..{MAX_HEAD_DIM}")
    Hq, Hkv = q.shape[1], k.shape[1]
    if Hq != 0 and (Hkv == 0 or Hq % Hkv):
        fail("k", f"k: number of key/value heads {Hkv} must divide the number of query heads {Hq}")
    if mask.device != q.device:
        fail("mask", f"mask: built on device {mask.device}, but q is on {q.device}")
    if op == "ulysses_attention" and Hq % world:
        fail("heads", f"q: {Hq} query heads are not divisible by the world size {world}: Ulysses splits the heads "
                      f"across ranks; use context_parallel_attention (splits the sequence only) instead")
    if heads_world > 1 and Hq % heads_world:
        fail("heads", f"q: {Hq} query heads are not divisible by the ulysses_group's {heads_world} ranks: Ulysses "
                      f"splits the heads across them; use a smaller ulysses_group, or none")
    try:
        check_scale(kwargs.get("scale"))
        check_window(kwargs.get("window"))
    except (TypeError, ValueError) as e:
        raise _Bad("scale" if str(e).startswith("scale") else "window", e)
    if not isinstance(kwargs.get("return_lse", False), bool):
        fail("return_lse", f"return_lse: expected a bool, got {kwargs['return_lse']!r}", TypeError)
    if kwargs.get("backend", "auto") not in ("auto", "torch", "triton"):
        fail("backend", f"backend: expected 'auto', 'torch' or 'triton' under sequence parallelism, got "
                        f"{kwargs.get('backend')!r}")
    fp = mask_fingerprint(mask).tolist()
    if tuple(fp) != plan.fingerprint:
        fail("plan", "plan: built for another mask (its fingerprint differs from this mask's); build the plan from "
                     "the mask of this batch: shard_plan(mask, world_size)")


_DISAGREE = {
    100: "mask: ranks disagree on the ids (mask fingerprints differ); every rank must build the mask from the same "
         "whole row's ids",
    101: "plan: ranks disagree on the plan; build it from the same mask and world size on every rank",
    102: "q: ranks disagree on heads, head dim or dtype",
}


def check_inputs(op: str, q, k, v, mask, plan, group, world: int, rank: int, kwargs: dict, verify: bool = True,
                 groups=None, heads_world: int = 1):
    """Raise before any data collective if any rank's input is bad or the ranks disagree (see module doc).

    `groups`: the process groups the op communicates over (default ``[group]``); the verdicts travel through
    each in turn, so that with two groups (Ulysses inside, context parallel across) every rank hears of every
    other before anyone raises."""
    err: Optional[_Bad] = None
    try:
        _local(op, q, k, v, mask, plan, world, kwargs, heads_world)
    except _Bad as e:
        err = e
    if not verify:
        if err is not None:
            raise err.exc
        return
    row = torch.zeros(11, dtype=torch.int64)
    if err is not None:
        row[0] = _ARGS.index(err.arg) + 1
        row[1] = dist.get_rank()
    else:
        row[2:6] = mask_fingerprint(mask).cpu()
        row[6] = plan_hash(plan)
        row[7:11] = torch.tensor([q.shape[1], k.shape[1], q.shape[3], SUPPORTED_DTYPES.index(q.dtype)])
    dev = q.device if isinstance(q, torch.Tensor) and q.is_cuda and dist.get_backend(group) == "nccl" else "cpu"
    for g in (groups if groups is not None else [group]):
        n = dist.get_world_size(g)
        rows = [torch.empty_like(row, device=dev) for _ in range(n)]
        dist.all_gather(rows, row.to(dev), group=g)
        rows = torch.stack(rows).cpu()
        bad = (rows[:, 0] != 0).nonzero().flatten().tolist()
        if bad:  # the first failure heard of travels on
            row = rows[bad[0]].clone()
            continue
        for code, (a, b) in ((100, (2, 6)), (101, (6, 7)), (102, (7, 11))):
            sub = rows[:, a:b]
            diff = (sub != sub[0]).any(dim=1).nonzero().flatten().tolist()
            if diff:
                row = torch.zeros_like(row)
                row[0], row[1] = code, -1
                break
    if err is not None:
        raise err.exc
    code = int(row[0])
    if code in _DISAGREE:
        raise ValueError(_DISAGREE[code])
    if code:
        arg = _ARGS[code - 1]
        name = "q" if arg == "heads" else arg
        raise ValueError(f"{name}: rank {int(row[1])} (global) rejected its {name} (see that rank's error); "
                         f"{op} was not run")
