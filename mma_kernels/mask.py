"""`MMAMask`: the per-token description of a modality-mutual attention mask.

The mask is never stored densely. From the ids (modality, segment, document),
one vectorized pass on the ids' device builds O(L) int32 fields per batch row
(`MMAMask.meta`, shape [B, NUM_FIELDS, Lk]):

=========  ==================================================================
field      meaning (absolute key positions 0..Lk-1; ``BIG = Lk``)
=========  ==================================================================
DOC        document run index (0, 1, ...), -1 for padding
SEG        segment run index, unique over the row, -1 for padding
KMOD       modality id (padding -> 0)
QBITS      look-ahead bitmask of the token as a query (policy bits[modality])
KV_LO      as query: first key it may see (its document's start); BIG if pad
KV_HI      as query: last key it may see (own position, or the last key of its
           segment of a modality it may look ahead at); -1 if pad
Q_LO       as key: first query that may see it (own position, or the first
           query of its segment allowed to look ahead at its modality); BIG if pad
Q_HI       as key: last query that may see it (its document's end); -1 if pad
=========  ==================================================================

plus ``padcum`` [B, Lk+1]: number of padding tokens before each position.
The kernels reduce these per tile to block ranges (which tiles to skip) and
fully-allowed ranges (which tiles need no per-element mask), so one mask
serves every layer, head and block size.
"""
from __future__ import annotations

from typing import Optional

import torch

from .policy import PolicyLike, describe, policy_bits
from .validation import check_ids

DOC, SEG, KMOD, QBITS, KV_LO, KV_HI, Q_LO, Q_HI = range(8)
NUM_FIELDS = 8


def _runs(ids: torch.Tensor, valid: torch.Tensor):
    """Run starts among valid tokens (padding is skipped over) and run index per token."""
    B, L = ids.shape
    pos = torch.arange(L, device=ids.device).expand(B, L)
    last_valid = torch.where(valid, pos, -1).cummax(dim=1).values
    prev = torch.cat([torch.full((B, 1), -1, device=ids.device, dtype=pos.dtype), last_valid[:, :-1]], dim=1)
    prev_id = ids.gather(1, prev.clamp(min=0))
    start = valid & ((prev < 0) | (prev_id != ids))
    return start, start.long().cumsum(dim=1) - 1


def _per_run(run: torch.Tensor, values: torch.Tensor, reduce: str, init: int) -> torch.Tensor:
    """Reduce `values` over each run and broadcast the result back to every token of the run."""
    out = torch.full_like(values, init).scatter_reduce(1, run.clamp(min=0), values, reduce=reduce, include_self=True)
    return out.gather(1, run.clamp(min=0))


class MMAMask:
    """Modality-mutual attention mask for one batch, built once and shared by all layers and heads.

    Args:
        modality_ids: int tensor [B, Lk]. 0 = text, 1 = image, 2.. further modalities (up to 30),
            -1 = padding. Covers every key position (cached past included).
        segment_ids: optional int tensor [B, Lk]; contiguous runs of equal value are mutual
            segments (e.g. one user turn: its images and its question). Default: every token
            is its own segment, i.e. no look-ahead.
        document_ids: optional int tensor [B, Lk]; contiguous runs are independent packed
            documents. Default: the whole row is one document.
        policy: ``"mma"`` (image -> later text of the segment, AKI), ``"causal"``,
            ``"bidirectional_image"``, ``"prefix"``, or a collection of
            (query_modality, key_modality) pairs allowed to look ahead inside a segment.
        validate: check the ids (one host sync per mask). Turn off only for ids already checked.

    The rule (``docs/semantics.md``): query ``i`` may see key ``j`` iff both are not padding,
    they share a document, and ``j <= i`` or (same segment and (mod[i], mod[j]) in policy).
    Padding tokens are skipped when checking that segments/documents are contiguous runs.
    """

    def __init__(
        self,
        modality_ids: torch.Tensor,
        segment_ids: Optional[torch.Tensor] = None,
        document_ids: Optional[torch.Tensor] = None,
        policy: PolicyLike = "mma",
        validate: bool = True,
    ):
        bits = policy_bits(policy)  # validates the policy first: cheap and device-free
        self.policy = policy if isinstance(policy, str) else frozenset(tuple(p) for p in policy)
        check_ids(modality_ids, segment_ids, document_ids, full=validate)
        mod = modality_ids.long()
        B, L = mod.shape
        dev = mod.device
        self.batch_size, self.seq_len, self.device = B, L, dev
        valid = mod != -1
        pos = torch.arange(L, device=dev).expand(B, L)
        big = L

        if document_ids is None:
            doc_start, doc_run = _runs(torch.zeros_like(mod), valid)
        else:
            doc_start, doc_run = _runs(document_ids.long(), valid)
            if validate:
                _check_contiguous("document_ids", document_ids.long(), valid, doc_start)
        if segment_ids is None:
            seg_start, seg_run = valid, valid.long().cumsum(dim=1) - 1
        else:
            seg_start, seg_run = _runs(segment_ids.long(), valid)
            if validate:
                _check_contiguous("segment_ids", segment_ids.long(), valid, seg_start)
                _check_nested(segment_ids.long(), document_ids, doc_start, seg_start)

        qbits = torch.where(valid, bits.to(dev)[mod.clamp(min=0)], 0)
        vpos_lo = torch.where(valid, pos, big)
        vpos_hi = torch.where(valid, pos, -1)
        doc_lo = _per_run(doc_run, vpos_lo, "amin", big)
        doc_hi = _per_run(doc_run, vpos_hi, "amax", -1)
        # look-ahead bounds, per key modality present (one small host sync for the list):
        # a query looks up to the last key of its segment whose modality it may see; a key is
        # looked at from the first query of its segment that may see its modality.
        look_hi = torch.full_like(pos, -1)
        look_lo = torch.full_like(pos, big)
        if bool((qbits != 0).any()):
            for k in torch.unique(mod[valid]).tolist():
                is_k = valid & (mod == k)
                sees_k = ((qbits >> k) & 1) != 0
                last_k = _per_run(seg_run, torch.where(is_k, pos, -1), "amax", -1)
                look_hi = torch.where(sees_k, torch.maximum(look_hi, last_k), look_hi)
                first_k = _per_run(seg_run, torch.where(sees_k, vpos_lo, big), "amin", big)
                look_lo = torch.where(is_k, torch.minimum(look_lo, first_k), look_lo)

        meta = torch.stack(
            [
                torch.where(valid, doc_run, -1),
                torch.where(valid, seg_run, -1),
                mod.clamp(min=0),
                qbits,
                torch.where(valid, doc_lo, big),
                torch.where(valid, torch.maximum(pos, look_hi), -1),
                torch.where(valid, torch.minimum(pos, look_lo), big),
                torch.where(valid, doc_hi, -1),
            ],
            dim=1,
        )
        self.meta = meta.to(torch.int32).contiguous()
        self.padcum = torch.cat(
            [torch.zeros(B, 1, dtype=torch.long, device=dev), (~valid).long().cumsum(dim=1)], dim=1
        ).to(torch.int32)

    # ------------------------------------------------------------------ helpers
    def __repr__(self) -> str:
        return f"MMAMask(batch={self.batch_size}, seq_len={self.seq_len}, policy={describe(self.policy)}, device={self.device})"

    def field(self, f: int) -> torch.Tensor:
        return self.meta[:, f]

    def block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Allowed flags bool [B, len(rows), len(cols)] for absolute query positions `rows`, keys `cols`."""
        m = self.meta
        qd, qs, qb = m[:, DOC, rows], m[:, SEG, rows], m[:, QBITS, rows]
        kd, ks, km = m[:, DOC, cols], m[:, SEG, cols], m[:, KMOD, cols]
        same_doc = (qd[:, :, None] == kd[:, None, :]) & (qd[:, :, None] >= 0)
        causal = cols[None, None, :] <= rows[None, :, None]
        look = (qs[:, :, None] == ks[:, None, :]) & (((qb[:, :, None] >> km[:, None, :]) & 1) != 0)
        return same_doc & (causal | look)

    def query_offset(self, q_len: Optional[int]) -> int:
        q_len = self.seq_len if q_len is None else q_len
        if not 0 < q_len <= self.seq_len:
            raise ValueError(f"q_len: must be in 1..{self.seq_len} (the mask's Lk), got {q_len}")
        return self.seq_len - q_len

    def to_dense(self, q_len: Optional[int] = None) -> torch.Tensor:
        """Dense bool mask [B, Lq, Lk] (True = allowed). O(L^2): for debugging and tests only."""
        off = self.query_offset(q_len)
        cols = torch.arange(self.seq_len, device=self.device)
        return self.block(cols[off:], cols)

    def to_block_mask(self, block_size=128, q_len: Optional[int] = None, window: Optional[int] = None):
        """A FlexAttention `BlockMask` built from these O(L) fields (see `mma_kernels.flex`)."""
        from .flex import to_block_mask

        return to_block_mask(self, block_size, q_len, window)

    def num_allowed(self, q_len: Optional[int] = None) -> torch.Tensor:
        """Number of allowed (query, key) pairs per batch row, int64 [B], computed in O(L)."""
        off = self.query_offset(q_len)
        m = self.meta.long()
        valid = m[:, DOC] >= 0
        pos = torch.arange(self.seq_len, device=self.device)
        # causal part: valid keys in [doc_start, i] (padding inside a document is not counted)
        pad = self.padcum.long()
        lo = m[:, KV_LO].clamp(max=self.seq_len)
        causal = (pos + 1 - lo) - (pad[:, 1:] - pad.gather(1, lo))
        total = torch.where(valid, causal, 0)
        # look-ahead part: keys j > i of the same segment whose modality is in the query's bits
        hi = m[:, KV_HI].clamp(min=0)
        for k in torch.unique(m[:, KMOD][valid]).tolist():
            cnt = torch.cat([torch.zeros_like(pad[:, :1]), ((m[:, KMOD] == k) & valid).long().cumsum(1)], 1)
            ahead = cnt.gather(1, hi + 1) - cnt[:, 1:]
            has = ((m[:, QBITS] >> k) & 1) != 0
            total = total + torch.where(valid & has & (m[:, KV_HI] > pos), ahead, 0)
        return total[:, off:].sum(dim=1)


def _check_contiguous(name: str, ids: torch.Tensor, valid: torch.Tensor, start: torch.Tensor) -> None:
    """Each id value must form one run (padding ignored). One host sync."""
    big = torch.iinfo(torch.long).max
    s = torch.where(valid, ids, big).sort(dim=1).values
    distinct = (s[:, :1] != big).long().sum(1) + ((s[:, 1:] != s[:, :-1]) & (s[:, 1:] != big)).long().sum(1)
    runs = start.long().sum(1)
    bad = (runs != distinct).nonzero()
    if bad.numel():
        b = int(bad[0, 0])
        vals = ids[b][start[b]].tolist()
        seen, dup = set(), None
        for x in vals:
            if x in seen:
                dup = x
                break
            seen.add(x)
        where = (ids[b] == dup) & valid[b]
        raise ValueError(
            f"{name}: value {dup} in batch row {b} is not one contiguous run "
            f"(it appears at positions {where.nonzero().flatten().tolist()[:8]}...); "
            f"each segment/document must occupy consecutive positions"
        )


def _check_nested(seg: torch.Tensor, doc: Optional[torch.Tensor], doc_start, seg_start) -> None:
    if doc is None:
        return
    bad = (doc_start & ~seg_start).nonzero()
    if bad.numel():
        b, j = int(bad[0, 0]), int(bad[0, 1])
        raise ValueError(
            f"segment_ids: segment {int(seg[b, j])} in batch row {b} spans two documents "
            f"(document_ids changes to {int(doc[b, j])} at position {j} inside the segment); "
            f"give each document its own segment ids"
        )
