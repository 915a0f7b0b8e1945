"""`shard_plan`: which token positions each rank holds, balanced on the mask's per-query work.

The work of a query row is the number of keys it may see (`MMAMask.allowed_per_query`, O(L) from the
per-token bounds, no L x L). The row is cut into ``k * P`` equal chunks (P = world size) and each rank gets
``k`` of them, assigned by largest-work-first to the least loaded rank that still has room (then pairwise
swaps off the most loaded rank). ``k = 1`` is contiguous chunking, ``k = 2`` with the pairing
``(r, 2P - 1 - r)`` is zigzag, which balances plain causal attention only; look-ahead, images, padding and
packed documents move the work around, and a finer cut with a greedy assignment follows it. The plan tries
contiguous, zigzag, then finer cuts (``k`` dividing the shard length, about doubling: 2, 3 or 4, ...; chunks of
at least `min_chunk` tokens) and keeps the coarsest cut whose max / mean allowed pairs per rank is at most
`tolerance` (else the best cut it found). A shard length with many small factors (pad rows to a multiple of
``P * 64``, say) leaves the most cuts to choose from.

Rows of a batch share one plan: the work of a position is summed over the batch rows (every rank holds the
same positions of every row). Rows must hold a multiple of the world size of tokens: the *caller* pads (with
``modality_ids == -1``; padding costs no work) -- `pad_to_multiple` does it for the ids.
"""
from __future__ import annotations

import heapq
import numbers
from typing import List, Optional, Sequence

import torch

from ..mask import KV_HI, KV_LO, WIN_KV_LO, MMAMask


def mask_fingerprint(mask: MMAMask) -> torch.Tensor:
    """int64 [4] on the mask's device: shape and two hashes of the mask's O(L) fields (cached on the mask).

    Two masks with equal fields (ids, policies, groups) give equal fingerprints; any difference changes them
    with overwhelming probability. O(L), no host sync."""
    cached = getattr(mask, "_sp_fingerprint", None)
    if cached is not None:
        return cached
    x = torch.cat([mask.meta.long().flatten(), mask.padcum.long().flatten()])
    idx = torch.arange(x.numel(), device=x.device, dtype=torch.int64)
    w1 = idx * -7046029254386353131 + 1442695040888963407  # wrapping int64 arithmetic (a 64-bit LCG step)
    w1 = w1 ^ (w1 >> 29)
    w2 = (idx + 0x5851F42D) * 6364136223846793005
    w2 = w2 ^ (w2 >> 31)
    h1 = ((x + 1) * w1).sum()
    h2 = ((x * x + 7) * w2).sum()
    shape = torch.tensor(mask.batch_size * 65536 + mask.meta.shape[1], device=x.device, dtype=torch.int64)
    fp = torch.stack([shape, torch.tensor(mask.seq_len, device=x.device, dtype=torch.int64), h1, h2])
    mask._sp_fingerprint = fp
    return fp


def pad_to_multiple(ids: torch.Tensor, world_size: int, value: Optional[int] = None) -> torch.Tensor:
    """`ids` [B, L] padded on the right to a multiple of `world_size` tokens with `value` (-1 for
    ``modality_ids``); ``value=None`` repeats each row's last id (segment/document/group ids). Pass
    ``world_size * 64`` (say) rather than the world size: a shard length with many small factors leaves
    `shard_plan` more cuts to balance with."""
    L = ids.shape[-1]
    extra = (-L) % world_size
    if not extra:
        return ids
    fill = ids[..., -1:].expand(*ids.shape[:-1], extra) if value is None else ids.new_full((*ids.shape[:-1], extra), value)
    return torch.cat([ids, fill], dim=-1)


class ShardPlan:
    """Positions of each rank's shard of a row (the same for every row of the batch).

    Attributes: ``world_size``, ``seq_len``, ``shard_len`` (= seq_len / world_size), ``chunk`` (tokens per
    chunk), ``chunks_per_rank``, ``assignment`` (LongTensor [world_size * chunks_per_rank], chunk -> rank),
    ``work`` (LongTensor [world_size]: allowed (query, key) pairs of each rank's queries, summed over the
    batch), ``fingerprint`` (the mask's, see `mask_fingerprint`, as Python ints), ``method``.
    """

    def __init__(self, world_size: int, seq_len: int, chunk: int, assignment: torch.Tensor, work: torch.Tensor,
                 fingerprint: Sequence[int], window: Optional[int], method: str):
        self.world_size, self.seq_len, self.chunk = world_size, seq_len, chunk
        self.shard_len = seq_len // world_size
        self.chunks_per_rank = self.shard_len // chunk
        self.assignment = assignment.cpu().long()
        self.work = work.cpu().long()
        self.fingerprint = tuple(int(x) for x in fingerprint)
        self.window = window
        self.method = method
        starts = torch.arange(len(self.assignment)) * chunk
        self._pos = []
        for r in range(world_size):
            s = starts[self.assignment == r]
            self._pos.append((s[:, None] + torch.arange(chunk)[None, :]).flatten().contiguous())
        self._dev = {}
        self._routes = {}

    # ------------------------------------------------------------------ positions
    def positions(self, rank: int, device=None) -> torch.Tensor:
        """Sorted LongTensor [shard_len]: the absolute positions rank `rank` holds (on `device`, cached)."""
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 0 <= rank < self.world_size:
            raise ValueError(f"rank: expected an int in 0..{self.world_size - 1}, got {rank!r}")
        if device is None or torch.device(device) == torch.device("cpu"):
            return self._pos[rank]
        key = (rank, str(torch.device(device)))
        if key not in self._dev:
            self._dev[key] = self._pos[rank].to(device)
        return self._dev[key]

    def order(self, device=None) -> torch.Tensor:
        """LongTensor [seq_len]: rank 0's positions, then rank 1's, ... (the layout of an all-gather)."""
        key = ("order", str(torch.device(device or "cpu")))
        if key not in self._dev:
            self._dev[key] = torch.cat(self._pos).to(device or "cpu")
        return self._dev[key]

    def shard(self, x: torch.Tensor, rank: int, dim: int = -1) -> torch.Tensor:
        """This rank's positions of a whole-row tensor along `dim` (ids, labels, position_ids, hidden states)."""
        if x.shape[dim] != self.seq_len:
            raise ValueError(f"x: has {x.shape[dim]} positions along dim {dim}, the plan covers {self.seq_len}")
        return x.index_select(dim, self.positions(rank, x.device))

    def unshard(self, shards: List[torch.Tensor], dim: int = -1) -> torch.Tensor:
        """Inverse of `shard`: the whole row from every rank's shard (e.g. after an all-gather)."""
        if len(shards) != self.world_size:
            raise ValueError(f"shards: expected {self.world_size} shards, got {len(shards)}")
        cat = torch.cat(shards, dim=dim)
        out = torch.empty_like(cat)
        idx = self.order(cat.device)
        return out.index_copy_(dim if dim >= 0 else cat.dim() + dim, idx, cat)

    def key_routes(self, mask: MMAMask, window: Optional[int] = None):
        """``routes[s][r]``: the sorted positions of rank s's shard that some query of rank r may see, in any
        batch row (a superset of the allowed keys: each query's key range ``[KV_LO, KV_HI]``, under the window).
        Context parallelism sends rank r only these keys of rank s: a (query shard, key shard) pair without an
        allowed pair moves nothing. O(L * world_size) from the mask's fields, cached per mask and window."""
        key = (tuple(mask_fingerprint(mask).tolist()), window)
        if key in self._routes:
            return self._routes[key]
        L, dev = self.seq_len, mask.device
        lo = (mask.meta[:, KV_LO] if window is None else mask.window_fields(window)[:, WIN_KV_LO]).long()
        hi = mask.meta[:, KV_HI].long()
        B = lo.shape[0]
        need = []
        for r in range(self.world_size):
            pos = self.positions(r, dev)
            l, h = lo[:, pos], hi[:, pos]
            real = (h >= l).long()  # padding queries see nothing
            diff = torch.zeros(B, L + 1, dtype=torch.long, device=dev)
            diff.scatter_add_(1, torch.where(real > 0, l, L), real)
            diff.scatter_add_(1, torch.where(real > 0, h + 1, L), -real)
            need.append((diff[:, :L].cumsum(dim=1) > 0).any(dim=0))
        routes = []
        for s_ in range(self.world_size):
            ps = self.positions(s_, dev)
            routes.append([ps[need[r][ps]] for r in range(self.world_size)])
        self._routes[key] = routes
        return routes

    def coarsen(self, factor: int) -> "ShardPlan":
        """The plan of `world_size // factor` ranks whose rank c holds the positions of this plan's ranks
        ``c * factor .. c * factor + factor - 1`` (Ulysses inside groups of `factor` ranks, context parallel
        across them)."""
        if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1 or \
                self.world_size % factor:
            raise ValueError(f"factor: expected a divisor of world_size={self.world_size}, got {factor!r}")
        return ShardPlan(self.world_size // factor, self.seq_len, self.chunk, self.assignment // factor,
                         self.work.view(-1, factor).sum(1), self.fingerprint, self.window, self.method)

    @property
    def imbalance(self) -> float:
        """max / mean allowed pairs per rank (1.0 = perfectly balanced)."""
        mean = self.work.double().mean()
        return float(self.work.max() / mean) if mean > 0 else 1.0

    def __repr__(self) -> str:
        return (f"ShardPlan(world_size={self.world_size}, seq_len={self.seq_len}, chunk={self.chunk}, "
                f"chunks_per_rank={self.chunks_per_rank}, method={self.method!r}, imbalance={self.imbalance:.4f})")


# ---------------------------------------------------------------------- assignment
def _work_per_position(mask: MMAMask, window) -> torch.Tensor:
    return mask.allowed_per_query(window).sum(dim=0).cpu()


def _chunk_work(w: torch.Tensor, chunk: int) -> torch.Tensor:
    return w.view(-1, chunk).sum(dim=1)


def _loads(cw: torch.Tensor, assign: torch.Tensor, P: int) -> torch.Tensor:
    return torch.zeros(P, dtype=torch.long).index_add_(0, assign, cw)


def assign_contiguous(n_chunks: int, P: int) -> torch.Tensor:
    return torch.arange(n_chunks) // (n_chunks // P)


def assign_zigzag(P: int) -> torch.Tensor:
    """2P chunks; rank r holds chunks r and 2P - 1 - r."""
    a = torch.arange(2 * P)
    return torch.where(a < P, a, 2 * P - 1 - a)


def _assign_greedy(cw: torch.Tensor, P: int, per_rank: int, swaps: int = 200) -> torch.Tensor:
    """Largest work first onto the least loaded rank with room, then swaps off the most loaded rank."""
    order = torch.argsort(cw, descending=True, stable=True).tolist()
    work = cw.tolist()
    assign = [0] * len(work)
    heap = [(0, r) for r in range(P)]
    count = [0] * P
    for c in order:
        load, r = heapq.heappop(heap)
        assign[c] = r
        count[r] += 1
        if count[r] < per_rank:
            heapq.heappush(heap, (load + work[c], r))
        # a full rank leaves the heap
    a = torch.tensor(assign)
    loads = _loads(cw, a, P)
    for _ in range(swaps):  # swap one chunk of the most loaded rank with one of the least loaded
        hi, lo = int(loads.argmax()), int(loads.argmin())
        gap = int(loads[hi] - loads[lo])
        if gap <= 1:
            break
        ch, cl = (a == hi).nonzero().flatten(), (a == lo).nonzero().flatten()
        d = cw[ch][:, None] - cw[cl][None, :]  # moving d from hi to lo: the pair's new gap |gap - 2d|
        gain = (gap - (gap - 2 * d).abs())
        best = int(gain.argmax())
        if int(gain.flatten()[best]) <= 0:
            break
        i, j = divmod(best, len(cl))
        a[ch[i]], a[cl[j]] = lo, hi
        loads = _loads(cw, a, P)
    return a


def _check_world_size(world_size) -> int:
    if isinstance(world_size, bool) or not isinstance(world_size, numbers.Integral) or world_size < 1:
        raise ValueError(f"world_size: expected an int >= 1, got {world_size!r}")
    return int(world_size)


def shard_plan(mask: MMAMask, world_size: int, *, window: Optional[int] = None, tolerance: float = 1.01,
               min_chunk: int = 16, method: str = "balanced") -> ShardPlan:
    """Which positions each of `world_size` ranks holds, with equal token counts and balanced attention work.

    Args:
        mask: the whole row's `MMAMask` (every rank builds the same one from the whole row's ids).
        world_size: number of ranks sharing the row; ``mask.seq_len`` must be a multiple of it (pad the ids
            first: `pad_to_multiple`).
        window: balance the work of this sliding window (default: none, the global layers' work).
        tolerance: stop refining once max / mean allowed pairs per rank is at most this.
        min_chunk: the finest cut considered, in tokens (longer chunks keep the kernels' tiles dense).
        method: ``"balanced"`` (default), ``"zigzag"`` or ``"contiguous"`` (for comparison and plain causal).

    Returns a `ShardPlan`; ``plan.positions(rank)`` is the sorted LongTensor of rank's positions.
    Cost: O(L) on the mask's device plus O(L / chunk) on the host; no L x L anything.
    """
    if not isinstance(mask, MMAMask):
        raise TypeError(f"mask: expected an MMAMask, got {type(mask).__name__}")
    P = _check_world_size(world_size)
    if method not in ("balanced", "zigzag", "contiguous"):
        raise ValueError(f"method: expected 'balanced', 'zigzag' or 'contiguous', got {method!r}")
    L = mask.seq_len
    if L % P:
        raise ValueError(f"mask: the row holds {L} positions, not a multiple of world_size={P}; pad the ids to "
                         f"{L + (-L) % P} first (mma_kernels.distributed.pad_to_multiple, modality -1)")
    window = mask.effective_window(window)
    n = L // P
    w = _work_per_position(mask, window)
    fp = mask_fingerprint(mask).tolist()

    def make(chunk, assign, name):
        return ShardPlan(P, L, chunk, assign, _loads(_chunk_work(w, chunk), assign, P), fp, window, name)

    if method == "contiguous" or P == 1:
        return make(n, assign_contiguous(P, P), "contiguous")
    if method == "zigzag":
        if n % 2:
            raise ValueError(f"mask: zigzag needs an even shard length, got {n} (= {L} / {P})")
        return make(n // 2, assign_zigzag(P), "zigzag")
    best = make(n, assign_contiguous(P, P), "contiguous")
    if n % 2 == 0:
        z = make(n // 2, assign_zigzag(P), "zigzag")
        best = z if z.imbalance < best.imbalance else best
    last = 1
    for k in _divisors(n):  # chunks per rank, coarsest first; about doubling (any divisor of the shard length)
        if best.imbalance <= tolerance or n // k < min(min_chunk, n):
            break
        if k < 2 or k < 1.5 * last:
            continue
        last = k
        chunk = n // k
        cand = make(chunk, _assign_greedy(_chunk_work(w, chunk), P, k), "balanced")
        if cand.imbalance < best.imbalance - 1e-12:
            best = cand
    return best


def _divisors(n: int):
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))
