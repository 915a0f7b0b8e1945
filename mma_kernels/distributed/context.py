"""`context_parallel_attention`: the query shard stays, keys and values travel (as Llama 3's all-gather, routed).

Forward: each rank receives the keys (and values) its queries may see, from their owners, by one uneven
all-to-all (`ShardPlan.key_routes`: from the mask's per-query key ranges, O(L * P); a (query shard, key shard)
pair without an allowed pair moves nothing; on one long sample this is an all-gather), placed in row order;
then one kernel call for this rank's query rows at their absolute positions (`q_positions`, the plan's): the
kernels skip every tile with no allowed pair, so the work is this rank's allowed pairs (what the plan
balances), and the softmax is complete in one pass (no partial results to merge). Only the local shards are
saved for the backward, which exchanges K/V again, runs the kernel's backward for the local queries, and sends
each received key's dK/dV back to its owner, summed there source by source in rank order (deterministic).

Why this rather than ring pass-KV (`docs/distributed.md`, "Choosing", and `benchmarks/sp_cost.py`): at most
the same bytes ((P-1)/P of the row's K/V per rank each way), fewer on packed samples; a balanced plan gives
every rank scattered chunks, so a ring step's key shard would be scattered too and the kernels would need key
positions and lose their contiguous tile skipping; with GQA (Qwen2-VL: 4 KV heads for 28 query heads) the
whole row's K/V is a small fraction of the activations. The cost is transient memory: a whole-row K/V buffer
of one layer (freed after the layer), which the cost model reports per shape.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..attention import _pick_backend
from ..validation import resolve_scale
from .checks import check_inputs
from .comm import resolve_group
from .ulysses import _kv_for_heads, _to_heads, _to_shards, member_order


class _Ctx:
    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def _fn(backend: str):
    if backend == "triton":
        from ..ops.triton_ops import TritonMMAttention as Fn
    else:
        from ..ops.torch_ops import TorchMMAttention as Fn
    return Fn


class _Routes:
    """What this rank sends and receives for one (plan, mask, window): from `ShardPlan.key_routes`."""

    def __init__(self, plan, mask, window, rank, world, device):
        routes = plan.key_routes(mask, window)
        mine = plan.positions(rank, device)
        self.send = [routes[rank][r].to(device) for r in range(world)]  # my positions rank r needs
        self.recv = [routes[s][rank].to(device) for s in range(world)]  # rank s's positions I need
        self.send_local = [torch.searchsorted(mine, p) for p in self.send]  # their indices in my shard
        self.send_idx = torch.cat(self.send_local)
        self.recv_pos = torch.cat(self.recv)
        self.n_send = [len(p) for p in self.send]
        self.n_recv = [len(p) for p in self.recv]


def _exchange(x: torch.Tensor, out_rows: int, n_out, n_in, group) -> torch.Tensor:
    out = x.new_empty((out_rows,) + tuple(x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), n_out, n_in, group=group)
    return out


def _gather_kv(k, v, routes: _Routes, seq_len: int, group):
    """Local K/V shards [B, Hkv, Ls, D] -> the whole row's K and V [B, Hkv, L, D] holding the keys this rank's
    queries may see (zeros elsewhere: never allowed, so never used); only those keys travel."""
    kv = torch.stack([k, v]).permute(3, 0, 1, 2, 4)  # [Ls, 2, B, H, D]
    got = _exchange(kv.index_select(0, routes.send_idx), sum(routes.n_recv), routes.n_recv, routes.n_send, group)
    row = kv.new_zeros((seq_len,) + tuple(kv.shape[1:]))
    row.index_copy_(0, routes.recv_pos, got)
    row = row.permute(1, 2, 3, 0, 4)  # [2, B, H, L, D], a view: the kernels take strided K/V
    return row[0], row[1]


def _scatter_dkv(dk, dv, routes: _Routes, shard_len: int, group):
    """The whole row's dK/dV of this rank's queries -> the sum over ranks at this rank's positions: each rank
    returns the keys it received, and the owner adds them up source by source in rank order, in fp32
    (deterministic)."""
    dkv = torch.stack([dk, dv]).permute(3, 0, 1, 2, 4)  # [L, 2, B, H, D]
    back = _exchange(dkv.index_select(0, routes.recv_pos), sum(routes.n_send), routes.n_send, routes.n_recv, group)
    acc = torch.zeros((shard_len,) + tuple(dkv.shape[1:]), dtype=torch.float32, device=dk.device)
    start = 0
    for idx, n in zip(routes.send_local, routes.n_send):
        acc.index_add_(0, idx, back[start:start + n].float())
        start += n
    return acc.permute(1, 2, 3, 0, 4)  # [2, B, H, Ls, D]


class _ContextParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, plan, group, world, rank, scale, backend, win, window):
        q_pos = plan.positions(rank, q.device)
        routes = _Routes(plan, mask, window, rank, world, q.device)
        kf, vf = _gather_kv(k.detach(), v.detach(), routes, plan.seq_len, group)
        inner = _Ctx()
        out, lse = _fn(backend).forward(inner, q.detach(), kf, vf, mask, scale, win, window, q_pos)
        _, _, _, o_saved, lse_saved, win_saved, stats = inner.saved_tensors
        del kf, vf, inner  # only the shards are kept
        ctx.save_for_backward(q, k, v, o_saved, lse_saved, win_saved, stats)
        ctx.meta = (mask, plan, group, routes, q_pos, scale, backend, window)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, win, stats = ctx.saved_tensors
        mask, plan, group, routes, q_pos, scale, backend, window = ctx.meta
        if dout is None:
            dout = torch.zeros_like(out)
        kf, vf = _gather_kv(k, v, routes, plan.seq_len, group)
        inner = _Ctx()
        inner.saved_tensors = (q, kf, vf, out, lse, win, stats)
        inner.mask, inner.scale, inner.window, inner.q_pos = mask, scale, window, q_pos
        dq, dk, dv = _fn(backend).backward(inner, dout.contiguous(), dlse)[:3]
        del inner, kf, vf
        dkv = _scatter_dkv(dk, dv, routes, plan.shard_len, group)
        return (dq, dkv[0].to(k.dtype), dkv[1].to(v.dtype)) + (None,) * 9


def context_parallel_attention(q, k, v, mask, plan, group=None, *, ulysses_group=None, verify: bool = True,
                               **mma_kwargs):
    """MMA attention of a row split across the ranks of `group` by the plan: queries stay, K/V travel.

    Args:
        q: [B, Hq, L/P, D], this rank's positions ``plan.positions(rank)`` of the row (any number of heads).
        k, v: [B, Hkv, L/P, D], same positions, ``Hq % Hkv == 0``.
        mask: the `MMAMask` of the *whole* row (every rank builds it from the whole row's ids: O(L) ints).
        plan: `shard_plan(mask, P)`: balances the allowed pairs of each rank's queries.
        group: process group or 1-D DeviceMesh (default: the default group).
        ulysses_group: combine with Ulysses (e.g. Ulysses inside a node, context parallel across nodes): heads
            are first scattered over this group's ``Pu`` ranks by all-to-all (``Hq % Pu == 0``; KV heads
            replicated as in `ulysses_attention`), then context parallel runs over `group` (``Pc`` ranks) on the
            union of the group's positions. The plan is built for ``Pu * Pc`` ranks, and this rank holds
            ``plan.positions(group_rank * Pu + ulysses_group_rank)``.
        verify: exchange the ranks' verdicts and fingerprints first (one tiny all_gather per group and a host
            sync), so that bad or disagreeing inputs raise on every rank instead of hanging. Default on.
        **mma_kwargs: `mma_attention`'s ``scale``, ``return_lse``, ``backend`` ("auto", "torch", "triton"),
            ``window``.

    Returns out [B, Hq, L/P, D] (and lse [B, Hq, L/P], float32): exactly this rank's rows of the
    single-process `mma_attention` on the whole row. Differentiable in q, k, v; dK/dV reach their owners.
    Per rank: forward one all-to-all of the K/V its queries may see (an all-gather's bytes at most); backward
    the same again and one all-to-all returning their dK/dV to the owners.
    """
    group, world, rank = resolve_group(group)
    if ulysses_group is None:
        check_inputs("context_parallel_attention", q, k, v, mask, plan, group, world, rank, mma_kwargs, verify)
        cplan, q_in, k_in, v_in = plan, q, k, v
    else:
        ulysses_group, pu, urank = resolve_group(ulysses_group)
        check_inputs("context_parallel_attention", q, k, v, mask, plan, group, world * pu, rank * pu + urank,
                     mma_kwargs, verify, groups=[ulysses_group, group], heads_world=pu)
        cplan = plan.coarsen(pu)
        to_sorted, from_sorted = member_order(plan, range(rank * pu, rank * pu + pu), q.device)
        k_in, v_in = (_kv_for_heads(t, q.shape[1], pu) for t in (k, v))
        q_in, k_in, v_in = (_to_heads(t, pu, to_sorted, ulysses_group) for t in (q, k_in, v_in))
    return_lse = mma_kwargs.get("return_lse", False)
    backend = _pick_backend(mma_kwargs.get("backend", "auto"), q.device)
    scale = resolve_scale(mma_kwargs.get("scale"), q.shape[-1])
    window = mask.effective_window(mma_kwargs.get("window"))
    win = mask.window_fields(window) if window is not None else None
    out, lse = _ContextParallel.apply(q_in, k_in, v_in, mask, cplan, group, world, rank, scale, backend, win, window)
    if ulysses_group is not None:
        out = _to_shards(out, pu, from_sorted, ulysses_group)
        lse = _to_shards(lse, pu, from_sorted, ulysses_group) if return_lse else None
    return (out, lse) if return_lse else out
