"""Padding-free packing for multimodal samples: `MMADataCollatorWithFlattening`."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from .ids import cut_segments, label_starts, mma_ids_from_input_ids


def _as_list(name: str, x) -> List[int]:
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise ValueError(f"{name}: expected a 1D sequence per sample, got shape {tuple(x.shape)}")
        return x.tolist()
    return list(x)


class MMADataCollatorWithFlattening:
    """Flatten a batch of samples into one row [1, N] for padding-free training, keeping the MMA ids.

    Each feature is a dict with ``input_ids`` and optionally ``labels``, ``modality_ids``,
    ``segment_ids``, ``document_ids`` (ignored: one document per sample), ``position_ids`` (the
    sample's own positions, [L] or M-RoPE [R, L], e.g. from a Qwen-VL model's ``get_rope_index``;
    kept as they are, so per-sample M-RoPE positions survive packing) and any key named in
    ``extra_keys`` (tensors concatenated along dim 0 as they are, e.g. ``pixel_values``,
    ``image_grid_thw``).
    Returns ``input_ids``, ``labels`` (the first token of each sample set to ``separator_id`` so no
    sample is trained to predict the next one's start; ``input_ids`` copies when a sample has no
    labels), ``position_ids`` (restarting at 0 per sample; [R, 1, N] when samples give M-RoPE
    positions), ``modality_ids``, ``segment_ids`` (made distinct between samples), ``document_ids``
    (the sample index), all int64 [1, N].

    Modality/segment ids missing from a sample are derived from its ``input_ids`` with
    `mma_ids_from_input_ids` when ``image_token_id`` is given, else it is all text (causal); derived
    segments also start at every supervised token of the sample's ``labels`` (leakage-safe for any
    chat template, as in `apply_mma`).
    Unlike ``transformers.DataCollatorWithFlattening``, unknown keys raise instead of being dropped.
    """

    def __init__(self, image_token_id=None, answer_token_id=None, turn_token_id=None,
                 separator_id: int = -100, extra_keys: Sequence[str] = ()):
        self.image_token_id, self.answer_token_id, self.turn_token_id = image_token_id, answer_token_id, turn_token_id
        self.separator_id = separator_id
        self.extra_keys = tuple(extra_keys)

    def __call__(self, features: List[Dict[str, Any]], return_tensors: str = "pt") -> Dict[str, torch.Tensor]:
        if return_tensors != "pt":
            raise ValueError(f"return_tensors: only 'pt' is supported, got {return_tensors!r}")
        if not features:
            raise ValueError("features: empty batch")
        known = {"input_ids", "labels", "modality_ids", "segment_ids", "document_ids", "attention_mask",
                 "position_ids", *self.extra_keys}
        cols = {k: [] for k in ("input_ids", "labels", "position_ids", "modality_ids", "segment_ids", "document_ids")}
        extras = {k: [] for k in self.extra_keys}
        positions = []
        seg_base = 0
        for n, f in enumerate(features):
            unknown = set(f) - known
            if unknown:
                raise ValueError(f"features[{n}]: unknown keys {sorted(unknown)}; list them in extra_keys to carry them")
            ids = _as_list(f"features[{n}]['input_ids']", f["input_ids"])
            L = len(ids)
            if L == 0:
                raise ValueError(f"features[{n}]['input_ids']: empty sample")
            labels = _as_list(f"features[{n}]['labels']", f["labels"]) if "labels" in f else list(ids)
            if "modality_ids" in f:
                mod = _as_list(f"features[{n}]['modality_ids']", f["modality_ids"])
                seg = _as_list(f"features[{n}]['segment_ids']", f["segment_ids"]) if "segment_ids" in f else list(range(L))
            elif self.image_token_id is not None:
                m, s = mma_ids_from_input_ids(torch.tensor([ids]), self.image_token_id, self.answer_token_id,
                                              turn_token_id=self.turn_token_id)
                if "labels" in f:
                    s = cut_segments(s, label_starts(torch.tensor([labels])))
                mod, seg = m[0].tolist(), s[0].tolist()
            else:
                mod, seg = [0] * L, list(range(L))
            for name, v in (("labels", labels), ("modality_ids", mod), ("segment_ids", seg)):
                if len(v) != L:
                    raise ValueError(f"features[{n}]['{name}']: length {len(v)} differs from input_ids' {L}")
            s0 = min(seg)
            seg = [s - s0 + seg_base for s in seg]
            seg_base = max(seg) + 1
            cols["input_ids"] += ids
            cols["labels"] += [self.separator_id] + labels[1:]
            pos = torch.as_tensor(f["position_ids"], dtype=torch.long) if "position_ids" in f else torch.arange(L)
            if pos.shape[-1] != L or pos.dim() > 2:
                raise ValueError(f"features[{n}]['position_ids']: expected shape [L] or [R, L] with L={L}, "
                                 f"got {tuple(pos.shape)}")
            positions.append(pos)
            cols["modality_ids"] += mod
            cols["segment_ids"] += seg
            cols["document_ids"] += [n] * L
            for k in self.extra_keys:
                if k in f:
                    extras[k].append(torch.as_tensor(f[k]))
        cols.pop("position_ids")
        out = {k: torch.tensor([v], dtype=torch.long) for k, v in cols.items()}
        if len({p.dim() for p in positions}) != 1 or len({p.shape[:-1] for p in positions}) != 1:
            raise ValueError(f"position_ids: samples give different shapes {[tuple(p.shape) for p in positions]}")
        pos = torch.cat(positions, dim=-1)
        out["position_ids"] = pos[None] if pos.dim() == 1 else pos[:, None]
        for k, v in extras.items():
            if v:
                out[k] = torch.cat(v, dim=0)
        return out
