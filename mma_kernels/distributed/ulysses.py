"""`ulysses_attention`: sequence parallelism by head scatter (DeepSpeed-Ulysses), with MMA on the whole row.

Each rank holds its shard of the row (the plan's positions) for all heads. One all-to-all per tensor gives
each rank the whole row for ``H / P`` heads; the package's `mma_attention` runs there with the whole row's
mask (so the rule is evaluated exactly as on one process); one all-to-all brings the output (and lse) back
to the shards. The backward runs the same exchanges in reverse (`comm.AllToAll`) around the kernel's own
backward. GQA with fewer KV heads than ranks replicates KV heads (their gradients are summed back).
"""
from __future__ import annotations

import math

import torch

from ..attention import mma_attention
from .checks import check_inputs
from .comm import all_to_all, resolve_group


def _kv_for_heads(k: torch.Tensor, Hq: int, world: int) -> torch.Tensor:
    """KV heads repeated so that their count is a multiple of the world size and every rank's contiguous
    slice of query heads maps onto its slice of KV heads (lcm(Hkv, P) heads; no copy when P divides Hkv)."""
    Hkv = k.shape[1]
    rep = world // math.gcd(Hkv, world)
    return k if rep == 1 else k.repeat_interleave(rep, dim=1)


def member_order(plan, members, device):
    """For the plan ranks `members` (one per rank of a Ulysses group, in group order): the sort that puts their
    concatenated positions in row order, and its inverse. The whole row when the group spans the plan."""
    cat = torch.cat([plan.positions(m, device) for m in members])
    to_sorted = torch.argsort(cat)
    return to_sorted, torch.argsort(to_sorted)


def _to_heads(x: torch.Tensor, world: int, to_sorted: torch.Tensor, group) -> torch.Tensor:
    """[B, H, Ls, *] (this rank's positions, all heads) -> [B, H/P, P*Ls, *]: the group's positions in row
    order (the whole row when the group spans the plan)."""
    B, H, Ls = x.shape[:3]
    rest = x.shape[3:]
    x = x.reshape(B, world, H // world, Ls, *rest).movedim(1, 0)  # [P, B, H/P, Ls, *]: chunk s to rank s
    y = all_to_all(x, group)  # [P(src), B, H/P, Ls, *]: the source rank's positions of our heads
    y = y.movedim(0, 2).reshape(B, H // world, world * Ls, *rest)  # rank 0's positions, rank 1's, ...
    return y.index_select(2, to_sorted)


def _to_shards(y: torch.Tensor, world: int, from_sorted: torch.Tensor, group) -> torch.Tensor:
    """Inverse of `_to_heads`: [B, H/P, P*Ls, *] -> [B, H, Ls, *]."""
    B, Hl, L = y.shape[:3]
    rest = y.shape[3:]
    Ls = L // world
    y = y.index_select(2, from_sorted).reshape(B, Hl, world, Ls, *rest).movedim(2, 0)  # [P(dst), B, H/P, Ls, *]
    x = all_to_all(y, group)  # [P(src heads), B, H/P, Ls, *]
    return x.movedim(0, 1).reshape(B, world * Hl, Ls, *rest)


def ulysses_attention(q, k, v, mask, plan, group=None, *, verify: bool = True, **mma_kwargs):
    """MMA attention of a row split across the ranks of `group` by the plan, heads scattered (Ulysses).

    Args:
        q: [B, Hq, L/P, D], this rank's positions ``plan.positions(rank)`` of the row, all heads.
        k, v: [B, Hkv, L/P, D], same positions. ``Hq`` must be divisible by the world size P (else use
            `context_parallel_attention`); ``Hkv`` may be smaller than P (KV heads are replicated).
        mask: the `MMAMask` of the *whole* row (every rank builds it from the whole row's ids: O(L) ints).
        plan: `shard_plan(mask, P)`.
        group: process group or 1-D DeviceMesh (default: the default group).
        verify: exchange the ranks' verdicts and fingerprints first (one tiny all_gather and host sync), so
            that bad or disagreeing inputs raise on every rank instead of hanging. Default on.
        **mma_kwargs: `mma_attention`'s ``scale``, ``return_lse``, ``backend`` ("auto", "torch", "triton"),
            ``window``.

    Returns out [B, Hq, L/P, D] (and lse [B, Hq, L/P], float32, with ``return_lse=True``): exactly this
    rank's rows of the single-process `mma_attention` on the whole row. Differentiable in q, k, v.
    Per rank: 4 all-to-alls forward (q, k, v, out; lse adds one), 4 backward, each moving (P-1)/P of a shard.
    """
    group, world, rank = resolve_group(group)
    check_inputs("ulysses_attention", q, k, v, mask, plan, group, world, rank, mma_kwargs, verify)
    return_lse = mma_kwargs.pop("return_lse", False)
    Hq = q.shape[1]
    to_sorted, from_sorted = member_order(plan, range(world), q.device)
    k, v = (_kv_for_heads(t, Hq, world) for t in (k, v))
    qh, kh, vh = (_to_heads(t, world, to_sorted, group) for t in (q, k, v))
    out, lse = mma_attention(qh, kh, vh, mask, return_lse=True, **mma_kwargs)
    out = _to_shards(out, world, from_sorted, group)
    if not return_lse:
        return out
    return out, _to_shards(lse, world, from_sorted, group)
