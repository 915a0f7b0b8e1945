"""`context_parallel_attention`: the query shard stays, keys and values travel (all-gather, as Llama 3).

Forward: all-gather this layer's K/V shards (the whole row's K/V, put back in row order), then one kernel
call for this rank's query rows at their absolute positions (`q_positions`, the plan's) against the whole
row's keys: the kernels skip every tile with no allowed pair from the mask's O(L) fields, so the work is
this rank's allowed pairs (what the plan balances), and the softmax is complete in one pass (no partial
results to merge). Only the local shards are saved for the backward, which all-gathers K/V again, runs the
kernel's backward for the local queries, and returns each rank's dK/dV contributions to their owners with
one all-to-all summed in rank order (a deterministic reduce-scatter).

Why all-gather rather than ring pass-KV (`docs/distributed.md`, "Choosing", and `benchmarks/sp_cost.py`):
the bytes moved are the same ((P-1)/P of the row's K/V per rank each way); a balanced plan gives every
rank scattered chunks, so a ring step's key shard would be scattered too and the kernels would need key
positions and lose their contiguous tile skipping; with GQA (Qwen2-VL: 4 KV heads for 28 query heads) the
whole row's K/V is a small fraction of the activations. The cost is transient memory: the whole row's K/V
of one layer (freed after the layer), which the cost model reports per shape.
"""
from __future__ import annotations

import torch

from ..attention import _pick_backend
from ..validation import resolve_scale
from .checks import check_inputs
from .comm import reduce_scatter_sum, resolve_group
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


def _gather_kv(k, v, plan, group, world):
    """Local K/V shards [B, Hkv, Ls, D] -> the whole row's K and V [B, Hkv, L, D] in row order. Transient:
    the gathered shards and the row (2 x the whole row's K/V), the shards freed as they are placed."""
    kv = torch.stack([k, v]).contiguous()
    parts = [torch.empty_like(kv) for _ in range(world)]
    torch.distributed.all_gather(parts, kv, group=group)
    B, H, _, D = k.shape
    row = kv.new_empty((2, B, H, plan.seq_len, D))
    for r in range(world):
        row.index_copy_(3, plan.positions(r, k.device), parts[r])
        parts[r] = None
    return row[0], row[1]


def _scatter_dkv(dk, dv, plan, group, world):
    """Each rank's dK/dV over the whole row -> the sum over ranks at this rank's positions (an all-to-all and a
    sum in rank order: a deterministic reduce-scatter)."""
    B, H, L, D = dk.shape
    send = dk.new_empty((world, 2, B, H, L // world, D))
    for r in range(world):
        pos = plan.positions(r, dk.device)
        send[r, 0] = dk.index_select(2, pos)
        send[r, 1] = dv.index_select(2, pos)
    return reduce_scatter_sum(send, group)  # [2, B, H, Ls, D]


class _ContextParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, plan, group, world, rank, scale, backend, win, window):
        q_pos = plan.positions(rank, q.device)
        kf, vf = _gather_kv(k.detach(), v.detach(), plan, group, world)
        inner = _Ctx()
        out, lse = _fn(backend).forward(inner, q.detach(), kf, vf, mask, scale, win, window, q_pos)
        _, _, _, o_saved, lse_saved, win_saved, stats = inner.saved_tensors
        del kf, vf, inner  # only the shards are kept
        ctx.save_for_backward(q, k, v, o_saved, lse_saved, win_saved, stats)
        ctx.meta = (mask, plan, group, world, q_pos, scale, backend, window)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, win, stats = ctx.saved_tensors
        mask, plan, group, world, q_pos, scale, backend, window = ctx.meta
        if dout is None:
            dout = torch.zeros_like(out)
        kf, vf = _gather_kv(k, v, plan, group, world)
        inner = _Ctx()
        inner.saved_tensors = (q, kf, vf, out, lse, win, stats)
        inner.mask, inner.scale, inner.window, inner.q_pos = mask, scale, window, q_pos
        dq, dk, dv = _fn(backend).backward(inner, dout.contiguous(), dlse)[:3]
        del inner, kf, vf
        dkv = _scatter_dkv(dk, dv, plan, group, world)
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
    Per rank: forward one all-gather of K/V; backward one all-gather of K/V and one all-to-all of dK/dV.
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
