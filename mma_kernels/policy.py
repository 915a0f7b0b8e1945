"""Attention policies: which (query modality, key modality) pairs may look ahead.

A policy is stored as one int32 bitmask per query modality: bit ``k`` of
``bits[q]`` is set when a query of modality ``q`` may attend to a later key of
modality ``k`` inside its mutual segment. Modalities are 0..30 (31 bits).
"""
from __future__ import annotations

from typing import Iterable, Tuple, Union

import torch

MAX_MODALITY = 30  # ids 0..30 fit one int32 bitmask per query modality
TEXT, IMAGE = 0, 1

PRESETS = {
    "mma": {(IMAGE, TEXT)},
    "causal": set(),
    "bidirectional_image": {(IMAGE, IMAGE)},
    "prefix": "all",
}

PolicyLike = Union[str, Iterable[Tuple[int, int]]]


def policy_bits(policy: PolicyLike) -> torch.Tensor:
    """Return int64 tensor [MAX_MODALITY + 1] of look-ahead bitmasks, one per query modality."""
    if isinstance(policy, str):
        if policy not in PRESETS:
            raise ValueError(
                f"policy: unknown policy name {policy!r}; expected one of "
                f"{sorted(PRESETS)} or a collection of (query_modality, key_modality) pairs"
            )
        pairs = PRESETS[policy]
        if pairs == "all":
            return torch.full((MAX_MODALITY + 1,), (1 << (MAX_MODALITY + 1)) - 1, dtype=torch.int64)
    else:
        try:
            pairs = {tuple(p) for p in policy}
        except TypeError:
            raise TypeError(
                f"policy: expected a preset name or a collection of (query_modality, key_modality) "
                f"pairs, got {type(policy).__name__}"
            ) from None
    bits = [0] * (MAX_MODALITY + 1)
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(m, int) and not isinstance(m, bool) for m in pair):
            raise TypeError(f"policy: each pair must be two ints (query_modality, key_modality), got {pair!r}")
        qm, km = pair
        for m in (qm, km):
            if not 0 <= m <= MAX_MODALITY:
                raise ValueError(f"policy: modality {m} in pair {pair!r} is outside 0..{MAX_MODALITY}")
        bits[qm] |= 1 << km
    return torch.tensor(bits, dtype=torch.int64)


def describe(policy: PolicyLike) -> str:
    return policy if isinstance(policy, str) else f"pairs{sorted({tuple(p) for p in policy})}"
