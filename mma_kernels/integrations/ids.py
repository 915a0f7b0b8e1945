"""Per-token MMA ids: derived from token ids, and fitted to a forward pass (padding, KV cache, chunks)."""
from __future__ import annotations

from typing import Iterable, Optional, Tuple, Union

import torch

from ..mask import KV_HI, MMAMask
from ..policy import IMAGE, TEXT

TokenIds = Union[int, Iterable[int]]


def _token_set(name: str, value: Optional[TokenIds]) -> Optional[torch.Tensor]:
    if value is None:
        return None
    vals = [value] if isinstance(value, int) and not isinstance(value, bool) else list(value)
    if not vals or not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        raise TypeError(f"{name}: expected a token id (int) or a collection of ints, got {value!r}")
    return torch.tensor(vals, dtype=torch.long, device="cpu")  # not the default device (meta under a meta init)


def _check_2d_int(name: str, t) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() != 2:
        raise TypeError(f"{name}: expected an integer tensor [B, L], got "
                        f"{type(t).__name__ if not isinstance(t, torch.Tensor) else (t.dtype, tuple(t.shape))}")


def mma_ids_from_input_ids(
    input_ids: torch.Tensor,
    image_token_id: TokenIds,
    answer_token_id: Optional[TokenIds] = None,
    attention_mask: Optional[torch.Tensor] = None,
    turn_token_id: Optional[TokenIds] = None,
    document_ids: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(modality_ids, segment_ids), both int64 [B, L], from token ids.

    - modality: 1 (image) where ``input_ids`` is ``image_token_id`` (an int or a collection),
      0 (text) elsewhere, -1 where ``attention_mask == 0`` (padding).
    - segments (the contract's AKI case): a mutual segment ends *with* every ``answer_token_id``
      (e.g. AKI's ``<|assistant|>``), so images see the question of their turn and the marker, never
      the answer after it; if given, a new segment also starts at every ``turn_token_id`` (e.g.
      ``<|user|>``). Tokens after the last ``answer_token_id`` of a row (the whole row if it has
      none, e.g. a pretraining caption) get no look-ahead at all (one segment per token), so no
      supervised token can ever be seen early. Without ``answer_token_id`` (and without
      ``turn_token_id``) the whole row is one segment: only right for prompts that hold no answer.
    - ``document_ids`` (packed rows): every rule above applies per document (a segment never crosses a
      document boundary, and "after the last answer marker" means the last one of the token's document),
      so a packed row gets the ids its samples would get one by one.
    """
    _check_2d_int("input_ids", input_ids)
    img = _token_set("image_token_id", image_token_id)
    if img is None:
        raise ValueError("image_token_id: required to derive modality ids from input_ids, got None")
    mod = torch.where(torch.isin(input_ids, img.to(input_ids.device)), IMAGE, TEXT).long()
    breaks = torch.zeros_like(input_ids, dtype=torch.bool)
    turn = _token_set("turn_token_id", turn_token_id)
    if turn is not None:
        breaks |= torch.isin(input_ids, turn.to(input_ids.device))
    ans = _token_set("answer_token_id", answer_token_id)
    if ans is not None:
        is_ans = torch.isin(input_ids, ans.to(input_ids.device))
        breaks[:, 1:] |= is_ans[:, :-1]  # a segment closes with the answer marker
    doc = None
    if document_ids is not None:
        _check_2d_int("document_ids", document_ids)
        if document_ids.shape != input_ids.shape:
            raise ValueError(f"document_ids: expected shape {tuple(input_ids.shape)} (as input_ids), "
                             f"got {tuple(document_ids.shape)}")
        doc = document_ids.to(input_ids.device)
        breaks[:, 1:] |= doc[:, 1:] != doc[:, :-1]
    seg = breaks.long().cumsum(dim=1)
    if ans is not None:  # after the last marker of its document (or with none): one segment per token
        L = input_ids.shape[1]
        after = is_ans.flip(1).long().cumsum(dim=1).flip(1)  # markers at or after each position, in the row
        if doc is not None:  # ... minus those of later documents: counted from the next document's start
            idx = torch.arange(L, device=input_ids.device).expand_as(doc)
            last = torch.ones_like(breaks)
            last[:, :-1] = doc[:, 1:] != doc[:, :-1]  # the last token of each document
            end = torch.where(last, idx, L).flip(1).cummin(dim=1).values.flip(1)  # its document's last index
            after_ext = torch.cat([after, after.new_zeros(after.shape[0], 1)], dim=1)
            after = after - after_ext.gather(1, end + 1)
        open_tail = after == 0
        pos = torch.arange(L, device=input_ids.device)
        seg = torch.where(open_tail, seg[:, -1:] + 1 + pos, seg)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} (as input_ids), "
                             f"got {tuple(attention_mask.shape)}")
        mod = torch.where(attention_mask.bool(), mod, -1)
    return mod, seg


def _documents_from_positions(position_ids: torch.Tensor) -> Optional[torch.Tensor]:
    """Packed rows: document ids [B, L] from position ids.

    - 2D [B, L] (or [1, L]): a document starts wherever the positions do not increase by one;
    - 4D-style M-RoPE [4, B, L] (transformers >= 5.2x: row 0 is the plain text position): the same on row 0;
    - 3D M-RoPE [3, B, L] (temporal, height, width): a document starts where all three rows are 0
      (every sample starts at (0, 0, 0), which no later token of the same sample has).
    """
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        position_ids = position_ids[0]
    if position_ids.dim() == 3:
        starts = (position_ids == 0).all(dim=0)
        starts[:, 0] = True
        return starts.long().cumsum(dim=1) - 1
    first = position_ids[:, :1] - 1
    starts = torch.diff(position_ids, prepend=first, dim=-1) != 1
    return starts.long().cumsum(dim=1)


def cut_segments(segment_ids: torch.Tensor, *breaks: Optional[torch.Tensor]) -> torch.Tensor:
    """Segment ids [B, L] that also start a new segment wherever a bool [B, L] in ``breaks`` is True,
    or where an int [B, L] in ``breaks`` (e.g. document ids) changes value."""
    new = torch.zeros_like(segment_ids, dtype=torch.bool)
    new[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    for b in breaks:
        if b is None:
            continue
        if b.dtype == torch.bool:
            new |= b.to(new.device)
        else:
            b = b.to(new.device)
            new[:, 1:] |= b[:, 1:] != b[:, :-1]
    return new.long().cumsum(dim=1)


def label_starts(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """bool [B, L]: True at every supervised token (``labels != ignore_index``).

    Starting a new mutual segment at each of them makes MMA leakage-safe for any chat template: an
    image can see every unsupervised prompt token before an answer, never a supervised one (HF labels
    are aligned with ``input_ids`` and shifted inside the loss)."""
    _check_2d_int("labels", labels)
    return labels != ignore_index


def fit_mma_ids(
    kv_len: int,
    modality_ids: Optional[torch.Tensor],
    segment_ids: Optional[torch.Tensor] = None,
    document_ids: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.Tensor] = None,
    batch_size: Optional[int] = None,
    device: Optional[torch.device] = None,
    group_ids: Optional[torch.Tensor] = None,
):
    """Fit user ids (over the prompt or the whole sequence) to the ``kv_len`` keys of one forward pass.

    - ids longer than ``kv_len`` (chunked prefill: the ids cover the whole prompt, the cache only the
      chunks so far): cut to ``kv_len``; a mutual segment split by the cut is an error, since its
      earlier queries could never see the later keys.
    - ids shorter than ``kv_len`` (``generate`` decoding: the ids cover the prompt): the extra
      positions are generated text, plain causal (modality 0, one segment and one group each, last
      document).
    - no ``modality_ids``: all text (causal).
    - no ``document_ids``: documents from packed ``position_ids`` (a new one wherever the positions do
      not go up by one), when no cache and no padding mask is in play, as transformers does for
      flash attention.
    - ``attention_mask`` (2D, 0 = padding, covering the keys) marks padding as modality -1.
    Returns (modality_ids, segment_ids, document_ids, split_check, group_ids) with the ids [B, kv_len].
    """
    if modality_ids is None:
        if batch_size is None:
            raise ValueError("modality_ids: required (or batch_size to default to all-text)")
        mod = torch.zeros(batch_size, kv_len, dtype=torch.long, device=device)
        seg = None
    else:
        _check_2d_int("modality_ids", modality_ids)
        mod, seg = modality_ids.long(), segment_ids
        if batch_size is not None and mod.shape[0] != batch_size:
            raise ValueError(f"modality_ids: batch size {mod.shape[0]} differs from the inputs' {batch_size}")
    for name, t in (("segment_ids", seg), ("document_ids", document_ids), ("group_ids", group_ids)):
        if t is not None:
            _check_2d_int(name, t)
            if t.shape != mod.shape:
                raise ValueError(f"{name}: expected shape {tuple(mod.shape)} (as modality_ids), got {tuple(t.shape)}")
    B, L = mod.shape
    if (document_ids is None and position_ids is not None and attention_mask is None and L == kv_len
            and position_ids.shape[-1] == kv_len and position_ids.dim() in (2, 3)):
        # packed rows (e.g. transformers' DataCollatorWithFlattening): documents restart with the positions
        pos = position_ids.to(mod.device)
        pos = pos.expand(B, -1) if pos.dim() == 2 else pos.expand(pos.shape[0], B, -1)
        document_ids = _documents_from_positions(pos)
        # segments and groups given over the whole row never cross a document found this way
        seg = cut_segments(seg.long().to(mod.device), document_ids) if seg is not None else None
        group_ids = cut_segments(group_ids.long().to(mod.device), document_ids) if group_ids is not None else None
    seg = seg.long() if seg is not None else None
    doc = document_ids.long() if document_ids is not None else None
    grp = group_ids.long() if group_ids is not None else None
    cut = None
    if L > kv_len:
        cut = (mod, seg, doc, grp)
        mod = mod[:, :kv_len]
        seg = seg[:, :kv_len] if seg is not None else None
        doc = doc[:, :kv_len] if doc is not None else None
        grp = grp[:, :kv_len] if grp is not None else None
    elif L < kv_len:
        n = kv_len - L
        ar = torch.arange(1, n + 1, device=mod.device).expand(B, n)
        mod = torch.cat([mod, torch.zeros(B, n, dtype=mod.dtype, device=mod.device)], dim=1)
        if seg is not None:
            seg = torch.cat([seg, seg.max(dim=1, keepdim=True).values + ar], dim=1)
        if doc is not None:
            doc = torch.cat([doc, doc[:, -1:].expand(B, n)], dim=1)
        if grp is not None:
            grp = torch.cat([grp, grp.max(dim=1, keepdim=True).values + ar], dim=1)
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.shape[0] != B:
            raise ValueError(f"attention_mask: expected a 2D [B, L] padding mask, got shape {tuple(attention_mask.shape)}")
        am = attention_mask[:, -kv_len:] if attention_mask.shape[1] >= kv_len else torch.cat(
            [attention_mask, attention_mask.new_ones(B, kv_len - attention_mask.shape[1])], dim=1)
        mod = torch.where(am.to(mod.device).bool(), mod, -1)
    return mod, seg, doc, cut, grp


def build_mma_mask(
    kv_len: int,
    modality_ids: Optional[torch.Tensor] = None,
    segment_ids: Optional[torch.Tensor] = None,
    document_ids: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.Tensor] = None,
    policy="mma",
    batch_size: Optional[int] = None,
    device: Optional[torch.device] = None,
    group_ids: Optional[torch.Tensor] = None,
    group_policy="bidirectional_image",
) -> MMAMask:
    """The `MMAMask` for one forward pass over ``kv_len`` keys (see `fit_mma_ids`). Build it once
    outside a compiled region and pass it as ``mma_mask=`` to a patched model for graph-break-free
    ``torch.compile``. ``group_ids``/``group_policy``: the second mutual level (a model's own rule,
    see `MMAMask`)."""
    mod, seg, doc, cut, grp = fit_mma_ids(kv_len, modality_ids, segment_ids, document_ids, attention_mask,
                                          position_ids, batch_size, device, group_ids)
    if device is not None:
        mod = mod.to(device)
        seg = seg.to(device) if seg is not None else None
        doc = doc.to(device) if doc is not None else None
        grp = grp.to(device) if grp is not None else None
    gkw = {} if grp is None else dict(group_ids=grp, group_policy=group_policy)
    if cut is not None:
        full = MMAMask(cut[0], cut[1], cut[2], policy=policy,
                       **({} if cut[3] is None else dict(group_ids=cut[3], group_policy=group_policy)))
        hi = full.meta[:, KV_HI, :kv_len]
        bad = (hi >= kv_len).nonzero()
        if bad.numel():
            b, i = int(bad[0, 0]), int(bad[0, 1])
            raise ValueError(
                f"chunked prefill: the chunk ends at position {kv_len}, inside a mutual segment or group "
                f"(batch row {b}: the token at position {i} may see keys up to position {int(hi[b, i])}); "
                f"split chunks at segment boundaries (e.g. a larger prefill_chunk_size)"
            )
    return MMAMask(mod, seg, doc, policy=policy, **gkw)


def group_ids_from_token_type_ids(token_type_ids: torch.Tensor, rule: str) -> torch.Tensor:
    """Group ids [B, L] for a model's own rule, from its ``token_type_ids``.

    - ``"image_blocks"`` (Gemma 3): each contiguous run of ``token_type_ids == 1`` (one image) is a group;
    - ``"prefix"`` (PaliGemma): the ``token_type_ids == 0`` prefix is one group.
    Every other token is its own group (the level then adds nothing for it)."""
    _check_2d_int("token_type_ids", token_type_ids)
    inside = (token_type_ids == 1) if rule == "image_blocks" else (token_type_ids == 0)
    if rule not in ("image_blocks", "prefix"):
        raise ValueError(f"rule: expected 'image_blocks' or 'prefix', got {rule!r}")
    cont = torch.zeros_like(inside)
    cont[:, 1:] = inside[:, 1:] & inside[:, :-1]  # continues the previous token's group
    return (~cont).long().cumsum(dim=1)
