"""`MMAMask`: the per-token description of a modality-mutual attention mask.

The mask is never stored densely. From the ids (modality, segment, document, and optionally
group), one vectorized pass on the ids' device builds O(L) int32 fields per batch row
(`MMAMask.meta`, shape [B, NUM_FIELDS, Lk]; the two group fields only when groups are used, or, adding
nothing, for a policy that is not uniform: see `policy.uniform_policy`):

=========  ==================================================================
field      meaning (absolute key positions 0..Lk-1; ``BIG = Lk``)
=========  ==================================================================
DOC        document run index (0, 1, ...), -1 for padding
SEG        segment run index, unique over the row, -1 for padding
KMOD       modality id; PAD_MOD (31) for padding: a bit no QBITS/GBITS holds
QBITS      look-ahead bitmask of the token as a query (policy bits[modality])
KV_LO      as query: first key it may see (its document's start); BIG if pad
KV_HI      as query: last key it may see (own position, or the last key of its
           segment/group of a modality it may look ahead at); -1 if pad
Q_LO       as key: first query that may see it (own position, or the first
           query of its segment/group allowed to look at its modality); BIG if pad
Q_HI       as key: last query that may see it (its document's end); -1 if pad
LA_LO      as query: first key after itself it may look ahead at (the first later key
           of its segment/group of a modality it may look at); BIG if none or pad
MOD_NEXT   as key: first position after its run of equal modality ids (padding is a
           run too); Lk at the end (lets the kernels hop over tiles of a modality
           that no query of the block looks ahead at)
GRP        group run index, unique over the row, -1 for padding (groups only)
GBITS      group-policy bitmask of the token as a query (groups only)
=========  ==================================================================

plus ``padcum`` [B, Lk+1]: number of padding tokens before each position.
A sliding window (an argument of the op, since it differs per layer) only moves KV_LO and Q_HI:
`MMAMask.window_fields(window)` derives them once per window value and caches them on the mask.
The kernels reduce these per tile to block ranges (which tiles to skip) and
fully-allowed ranges (which tiles need no per-element mask), so one mask
serves every layer, head and block size.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch

from .policy import PolicyLike, describe, normalize_policy, policy_bits, uniform_policy
from .validation import check_ids, check_window

DOC, SEG, KMOD, QBITS, KV_LO, KV_HI, Q_LO, Q_HI, LA_LO, MOD_NEXT, GRP, GBITS = range(12)
NUM_FIELDS = 10  # without groups; 12 with groups
PAD_MOD = 31  # KMOD of padding: modalities are 0..30, so no policy bit ever selects it
WIN_KV_LO, WIN_Q_HI = 0, 1  # rows of `window_fields`


def pad_field_values(seq_len: int) -> tuple:
    """Each field's value on a padding token (``BIG = seq_len``), in field order (12 fields)."""
    big = seq_len
    return (-1, -1, PAD_MOD, 0, big, -1, big, -1, big, big, -1, 0)


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


def _run_next(ids: torch.Tensor) -> torch.Tensor:
    """Per position, the first later position whose id differs (L if none): the end of its run + 1."""
    B, L = ids.shape
    pos = torch.arange(L, device=ids.device).expand(B, L)
    change = torch.cat([ids[:, 1:] != ids[:, :-1], torch.ones_like(ids[:, :1], dtype=torch.bool)], dim=1)
    return torch.where(change, pos + 1, L).flip(1).cummin(dim=1).values.flip(1)


def _look_bounds(run, qbits, mod, valid, pos, big, mods):
    """Bounds of one mutual level (segments under the policy, or groups under the group policy).

    Returns, per token: as a query, the first and last key of its run of a modality it may look at
    (BIG / -1 if none) and the first such key after itself (BIG if none); as a key, the first and last
    query of its run that may look at its modality.
    """
    run_end = _per_run(run, torch.where(valid, pos, -1), "amax", -1)
    q_next = torch.full_like(pos, big)
    q_first = torch.full_like(pos, big)
    q_last = torch.full_like(pos, -1)
    k_first = torch.full_like(pos, big)
    k_last = torch.full_like(pos, -1)
    vpos_lo = torch.where(valid, pos, big)
    vpos_hi = torch.where(valid, pos, -1)
    for k in mods:
        is_k = valid & (mod == k)
        sees_k = valid & (((qbits >> k) & 1) != 0)
        first_k = _per_run(run, torch.where(is_k, pos, big), "amin", big)
        last_k = _per_run(run, torch.where(is_k, pos, -1), "amax", -1)
        q_first = torch.where(sees_k, torch.minimum(q_first, first_k), q_first)
        q_last = torch.where(sees_k, torch.maximum(q_last, last_k), q_last)
        # next key of modality k strictly after the token (suffix minimum), if still in its run
        nxt = torch.where(is_k, pos, big).flip(1).cummin(dim=1).values.flip(1)
        nxt = torch.cat([nxt[:, 1:], torch.full_like(nxt[:, :1], big)], dim=1)
        q_next = torch.where(sees_k & (nxt <= run_end), torch.minimum(q_next, nxt), q_next)
        first_q = _per_run(run, torch.where(sees_k, vpos_lo, big), "amin", big)
        last_q = _per_run(run, torch.where(sees_k, vpos_hi, -1), "amax", -1)
        k_first = torch.where(is_k, torch.minimum(k_first, first_q), k_first)
        k_last = torch.where(is_k, torch.maximum(k_last, last_q), k_last)
    return q_first, q_last, k_first, k_last, q_next


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
        group_ids: optional int tensor [B, Lk]; a second mutual level, contiguous runs that do
            not cross a document (e.g. one image: Gemma 3; the prefix: PaliGemma), under
            ``group_policy``. Default: every token its own group (the level adds nothing).
        group_policy: the pairs allowed inside a group, same forms as ``policy``.
        validate: check the ids (one host sync per mask). Turn off only for ids already checked.

    The rule (``docs/semantics.md``): query ``i`` may see key ``j`` iff both are not padding,
    they share a document, and ``j <= i`` (and ``i - j < window`` when the op gets a window),
    or (same segment and (mod[i], mod[j]) in policy), or (same group and (mod[i], mod[j]) in
    group_policy). Padding tokens are skipped when checking that runs are contiguous.
    """

    def __init__(
        self,
        modality_ids: torch.Tensor,
        segment_ids: Optional[torch.Tensor] = None,
        document_ids: Optional[torch.Tensor] = None,
        policy: PolicyLike = "mma",
        *,
        group_ids: Optional[torch.Tensor] = None,
        group_policy: PolicyLike = "bidirectional_image",
        validate: bool = True,
    ):
        self.policy = normalize_policy(policy, "policy")  # validates first: cheap and device-free
        self.group_policy = normalize_policy(group_policy, "group_policy")
        bits = policy_bits(self.policy)
        gbits_table = policy_bits(self.group_policy, "group_policy")
        check_ids(modality_ids, segment_ids, document_ids, full=validate, group_ids=group_ids)
        mod = modality_ids.long()
        B, L = mod.shape
        dev = mod.device
        self.batch_size, self.seq_len, self.device = B, L, dev
        self._windows = {}
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
                _check_nested("segment_ids", segment_ids.long(), document_ids, doc_start, seg_start)

        qbits = torch.where(valid, bits.to(dev)[mod.clamp(min=0)], 0)
        gbits = None
        if group_ids is not None:
            grp_start, grp_run = _runs(group_ids.long(), valid)
            if validate:
                _check_contiguous("group_ids", group_ids.long(), valid, grp_start)
                _check_nested("group_ids", group_ids.long(), document_ids, doc_start, grp_start)
            gbits = torch.where(valid, gbits_table.to(dev)[mod.clamp(min=0)], 0)
        vpos_lo = torch.where(valid, pos, big)
        vpos_hi = torch.where(valid, pos, -1)
        doc_lo = _per_run(doc_run, vpos_lo, "amin", big)
        doc_hi = _per_run(doc_run, vpos_hi, "amax", -1)
        # look-ahead bounds, per key modality present (one small host sync for the list):
        # a query looks up to the last key of its segment (group) whose modality it may see; a key
        # is looked at from the first query of its segment (group) that may see its modality.
        # The outer bounds (first key a query may look at, last query that may look at a key)
        # only matter under a sliding window: kept for `window_fields`.
        q_first = torch.full_like(pos, big)
        q_last = torch.full_like(pos, -1)
        k_first = torch.full_like(pos, big)
        k_last = torch.full_like(pos, -1)
        la_lo = torch.full_like(pos, big)
        has_seg = bool((qbits != 0).any())
        has_grp = gbits is not None and bool((gbits != 0).any())
        if has_seg or has_grp:
            mods = torch.unique(mod[valid]).tolist()
            levels = ([(seg_run, qbits)] if has_seg else []) + ([(grp_run, gbits)] if has_grp else [])
            for run, lbits in levels:
                a, b, c, d, e = _look_bounds(run, lbits, mod, valid, pos, big, mods)
                la_lo = torch.minimum(la_lo, e)
                q_first, q_last = torch.minimum(q_first, a), torch.maximum(q_last, b)
                k_first, k_last = torch.minimum(k_first, c), torch.maximum(k_last, d)

        fields = [
            torch.where(valid, doc_run, -1),
            torch.where(valid, seg_run, -1),
            torch.where(valid, mod, PAD_MOD),
            qbits,
            torch.where(valid, doc_lo, big),
            torch.where(valid, torch.maximum(pos, q_last), -1),
            torch.where(valid, torch.minimum(pos, k_first), big),
            torch.where(valid, doc_hi, -1),
            torch.where(valid, la_lo, big),
            _run_next(mod),
        ]
        self._groups = has_grp
        if has_grp:  # groups that add nothing (no pair in group_policy) keep the plain kernels
            fields += [torch.where(valid, grp_run, -1), gbits]
        elif has_seg and not uniform_policy(bits):
            # the kernels' plain-MMA rule takes the policy's look-ahead bit from the block (`mask_rules`): exact
            # only when every query modality that looks ahead looks at the same modalities. Other policies carry
            # a group level that adds nothing (GRP -1, GBITS 0), which sends them to the general rule
            fields += [torch.full_like(mod, -1), torch.zeros_like(mod)]
        self.meta = torch.stack(fields, dim=1).to(torch.int32).contiguous()
        self.padcum = torch.cat(
            [torch.zeros(B, 1, dtype=torch.long, device=dev), (~valid).long().cumsum(dim=1)], dim=1
        ).to(torch.int32)
        # whether any token is padding (one small host sync, beside the ones above): without padding the
        # Triton kernels' masked tiles read V (dQ: K and V) through TMA descriptors too (`triton_ops._tma_level`);
        # and the work-weighted mean document length, sum(d^2) / sum(d) over the documents' valid tokens: the
        # kernels' autotune key (`triton_ops._doc_bucket`), since it decides how many tiles are masked
        n_valid, weighted = torch.stack([valid.sum(), torch.where(valid, doc_hi - doc_lo + 1, 0).sum()]).tolist()
        self.pad_keys = n_valid < B * L
        self.doc_length = weighted // n_valid if n_valid else 0
        # window-only bounds: first key a query may look at, last query that may look at a key
        self._look_outer = torch.stack([q_first, k_last], dim=1).to(torch.int32)

    # ------------------------------------------------------------------ helpers
    @property
    def has_groups(self) -> bool:
        """Whether the mask has a group level that adds a pair (a mask rebuilt from its fields: whether the fields
        hold a group level, which a policy that is not uniform also carries, adding nothing)."""
        return self.__dict__.get("_groups", self.meta.shape[1] > NUM_FIELDS)

    def __repr__(self) -> str:
        g = f", group_policy={describe(self.group_policy)}" if self.has_groups else ""
        return (f"MMAMask(batch={self.batch_size}, seq_len={self.seq_len}, policy={describe(self.policy)}{g}, "
                f"device={self.device})")

    def field(self, f: int) -> torch.Tensor:
        return self.meta[:, f]

    def effective_window(self, window: Optional[int]) -> Optional[int]:
        """`window` validated; None when it cuts nothing (``window >= Lk``)."""
        check_window(window)
        return None if window is None or int(window) >= self.seq_len else int(window)

    def window_fields(self, window: int) -> torch.Tensor:
        """int32 [B, 2, Lk]: KV_LO and Q_HI under a sliding window, cached per window value.

        As a query, the first key it may see: ``max(doc_start, i - window + 1)``, or earlier keys of
        its segment/group it may look at. As a key, the last query that may see it:
        ``min(doc_end, j + window - 1)``, or later queries of its segment/group that look at it.
        """
        w = operator.index(window)
        cached = self._windows.get(w)
        if cached is None:
            m = self.meta
            valid = m[:, DOC] >= 0
            pos = torch.arange(self.seq_len, device=self.device, dtype=torch.int32)
            lo = torch.minimum(torch.maximum(m[:, KV_LO], pos - (w - 1)), self._look_outer[:, 0])
            hi = torch.maximum(torch.minimum(m[:, Q_HI], pos + (w - 1)), self._look_outer[:, 1])
            cached = torch.stack([torch.where(valid, lo, self.seq_len), torch.where(valid, hi, -1)], dim=1)
            cached = cached.to(torch.int32).contiguous()
            self._windows[w] = cached
        return cached

    def block(self, rows: torch.Tensor, cols: torch.Tensor, window: Optional[int] = None) -> torch.Tensor:
        """Allowed flags bool [B, len(rows), len(cols)] for absolute query positions `rows`, keys `cols`."""
        m = self.meta
        qd, qs, qb = m[:, DOC, rows], m[:, SEG, rows], m[:, QBITS, rows]
        kd, ks, km = m[:, DOC, cols], m[:, SEG, cols], m[:, KMOD, cols]
        same_doc = (qd[:, :, None] == kd[:, None, :]) & (qd[:, :, None] >= 0)
        causal = cols[None, None, :] <= rows[None, :, None]
        if window is not None:
            causal = causal & (rows[None, :, None] - cols[None, None, :] < window)
        look = (qs[:, :, None] == ks[:, None, :]) & (((qb[:, :, None] >> km[:, None, :]) & 1) != 0)
        if self.has_groups:
            qg, gb, kg = m[:, GRP, rows], m[:, GBITS, rows], m[:, GRP, cols]
            look = look | ((qg[:, :, None] == kg[:, None, :]) & (((gb[:, :, None] >> km[:, None, :]) & 1) != 0))
        return same_doc & (causal | look)

    def query_offset(self, q_len: Optional[int]) -> int:
        q_len = self.seq_len if q_len is None else q_len
        if not 0 < q_len <= self.seq_len:
            raise ValueError(f"q_len: must be in 1..{self.seq_len} (the mask's Lk), got {q_len}")
        return self.seq_len - q_len

    def to_dense(self, q_len: Optional[int] = None, window: Optional[int] = None) -> torch.Tensor:
        """Dense bool mask [B, Lq, Lk] (True = allowed). O(L^2): for debugging and tests only."""
        off = self.query_offset(q_len)
        check_window(window)
        cols = torch.arange(self.seq_len, device=self.device)
        return self.block(cols[off:], cols, window)

    def to_block_mask(self, block_size=128, q_len: Optional[int] = None, window: Optional[int] = None):
        """A FlexAttention `BlockMask` built from these O(L) fields (see `mma_kernels.flex`)."""
        from .flex import to_block_mask

        return to_block_mask(self, block_size, q_len, window)

    def num_allowed(self, q_len: Optional[int] = None, window: Optional[int] = None) -> torch.Tensor:
        """Number of allowed (query, key) pairs per batch row, int64 [B], computed in O(L)."""
        off = self.query_offset(q_len)
        return self.allowed_per_query(window)[:, off:].sum(dim=1)

    def allowed_per_query(self, window: Optional[int] = None) -> torch.Tensor:
        """Number of keys each position may see as a query, int64 [B, Lk] (0 for padding), in O(L): the
        attention work of each query row (the sequence-parallel plans balance its sums)."""
        window = self.effective_window(window)
        m = self.meta.long()
        L = self.seq_len
        valid = m[:, DOC] >= 0
        pos = torch.arange(L, device=self.device)
        pad = self.padcum.long()
        # causal part: valid keys in [w_lo, i], w_lo = document start (or the window's, if later)
        w_lo = m[:, KV_LO].clamp(max=L)
        if window is not None:
            w_lo = torch.maximum(w_lo, pos - (window - 1)).clamp(max=L)
        total = torch.where(valid, (pos + 1 - w_lo) - (pad[:, 1:] - pad.gather(1, w_lo)), 0)
        # look part, per key modality k: the keys of modality k in the union of the query's segment
        # (if the policy has (mod[i], k)) and group (if the group policy has it), minus those already
        # counted in [w_lo, i]. Both runs contain i, so their union is one interval.
        levels = [(SEG, QBITS)] + ([(GRP, GBITS)] if self.has_groups else [])
        bounds = []
        for run_f, bits_f in levels:
            run = m[:, run_f].clamp(min=0)
            lo = _per_run(run, torch.where(valid, pos, L).expand_as(run), "amin", L)
            hi = _per_run(run, torch.where(valid, pos, -1).expand_as(run), "amax", -1)
            bounds.append((lo, hi, m[:, bits_f]))
        for k in torch.unique(m[:, KMOD][valid]).tolist():
            cnt = torch.cat([torch.zeros_like(pad[:, :1]), ((m[:, KMOD] == k) & valid).long().cumsum(1)], 1)
            lo_k = torch.full_like(m[:, DOC], L)
            hi_k = torch.full_like(m[:, DOC], -1)
            for lo, hi, bits in bounds:
                has = ((bits >> k) & 1) != 0
                lo_k = torch.where(has, torch.minimum(lo_k, lo), lo_k)
                hi_k = torch.where(has, torch.maximum(hi_k, hi), hi_k)
            some = valid & (hi_k >= 0)
            a, b = lo_k.clamp(0, L), (hi_k + 1).clamp(0, L)
            inside = cnt.gather(1, b) - cnt.gather(1, a)
            c = torch.maximum(a, w_lo)
            overlap = cnt[:, 1:] - cnt.gather(1, c.clamp(max=L))  # keys of modality k in [max(lo_k, w_lo), i]
            total = total + torch.where(some, inside - overlap.clamp(min=0), 0)
        return total


def _check_contiguous(name: str, ids: torch.Tensor, valid: torch.Tensor, start: torch.Tensor) -> None:
    """Each id value must form one run (padding ignored). One host sync. No sentinel value: padding
    takes a value already present in its row (which does not change the number of distinct values)."""
    any_valid = valid.any(dim=1)
    first = valid.long().argmax(dim=1, keepdim=True)
    fill = ids.gather(1, first)
    s = torch.where(valid, ids, fill).sort(dim=1).values
    distinct = torch.where(any_valid, 1 + (s[:, 1:] != s[:, :-1]).long().sum(1), 0)
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
            f"each segment/group/document must occupy consecutive positions"
        )


def _check_nested(name: str, ids: torch.Tensor, doc: Optional[torch.Tensor], doc_start, run_start) -> None:
    if doc is None:
        return
    bad = (doc_start & ~run_start).nonzero()
    if bad.numel():
        b, j = int(bad[0, 0]), int(bad[0, 1])
        what = name.split("_")[0]
        raise ValueError(
            f"{name}: {what} {int(ids[b, j])} in batch row {b} spans two documents "
            f"(document_ids changes to {int(doc[b, j])} at position {j} inside the {what}); "
            f"give each document its own {what} ids"
        )
