"""Collectives with autograd, on `torch.distributed` (any backend with all_to_all and all_gather: gloo, nccl).

Only `all_to_all_single` and `all_gather` are used: both exist on gloo and nccl, and an all-to-all followed
by a sum in rank order is a reduce-scatter whose result does not depend on arrival order (deterministic).
"""
from __future__ import annotations

from typing import List

import torch
import torch.distributed as dist


def resolve_group(group):
    """A process group (None: the default group) or a 1-D `DeviceMesh` -> (group, world size, rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("group: torch.distributed is not initialized; call torch.distributed.init_process_group "
                         "(e.g. under torchrun) before the sequence-parallel ops")
    if hasattr(group, "get_group") and not isinstance(group, dist.ProcessGroup):  # a DeviceMesh
        if group.ndim != 1:
            raise ValueError(f"group: a DeviceMesh must be 1-D here (pass mesh['cp'] or similar), got {group.ndim} dims")
        group = group.get_group()
    return group, dist.get_world_size(group), dist.get_rank(group)


def _a2a(x: torch.Tensor, group) -> torch.Tensor:
    """all_to_all_single over dim 0 (world-size equal chunks): chunk s goes to rank s."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


class AllToAll(torch.autograd.Function):
    """x [P, ...]: chunk s to rank s; returns [P, ...] with chunk s from rank s. Its own transpose: the backward
    is the same exchange of the gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _a2a(x, group)

    @staticmethod
    def backward(ctx, g):
        return _a2a(g, ctx.group), None


def all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    return AllToAll.apply(x, group)


def all_gather_cat(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """[world, *x.shape]: every rank's x, in rank order (no autograd)."""
    x = x.contiguous()
    parts: List[torch.Tensor] = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.stack(parts)


def reduce_scatter_sum(x: torch.Tensor, group) -> torch.Tensor:
    """x [P, ...] (chunk s: this rank's contribution to rank s's slice) -> the sum over ranks of their
    contributions to this rank's slice, added in rank order (deterministic), in fp32 (returned in fp32)."""
    return _a2a(x, group).sum(dim=0, dtype=torch.float32)


def gather_row(x: torch.Tensor, plan, group=None, dim: int = -1) -> torch.Tensor:
    """The whole row of a per-rank shard (no autograd): every rank's `x` (this rank's plan positions along `dim`,
    e.g. the shard's ``input_ids``, ``labels``, ``position_ids`` or ids) all-gathered and put back in row order.
    One all_gather of O(L / P) elements per rank: what an integration calls once per forward to build the whole
    row's `MMAMask` on every rank."""
    group, world, rank = resolve_group(group)
    if plan.world_size != world:
        raise ValueError(f"plan: built for world_size={plan.world_size}, but the process group has {world} ranks")
    if x.shape[dim] != plan.shard_len:
        raise ValueError(f"x: holds {x.shape[dim]} positions along dim {dim}, each rank's shard has {plan.shard_len}")
    parts = [torch.empty_like(x.contiguous()) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return plan.unshard(parts, dim=dim)
