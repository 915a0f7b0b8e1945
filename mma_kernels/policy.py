"""Attention policies: which (query modality, key modality) pairs may look ahead.

A policy is stored as one int32 bitmask per query modality: bit ``k`` of
``bits[q]`` is set when a query of modality ``q`` may attend to a later key of
modality ``k`` inside its mutual segment (or group, for a group policy).
Modalities are 0..30 (31 bits).
"""
from __future__ import annotations

from typing import FrozenSet, Iterable, Tuple, Union

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


def normalize_policy(policy: PolicyLike, name: str = "policy") -> Union[str, FrozenSet[Tuple[int, int]]]:
    """A preset name (checked) or the frozenset of its validated pairs. Iterables (a generator
    included) are read once, so what is stored is exactly what is applied."""
    if isinstance(policy, str):
        if policy not in PRESETS:
            raise ValueError(
                f"{name}: unknown policy name {policy!r}; expected one of "
                f"{sorted(PRESETS)} or a collection of (query_modality, key_modality) pairs"
            )
        return policy
    try:
        pairs = [tuple(p) for p in policy]
    except TypeError:
        raise TypeError(
            f"{name}: expected a preset name or a collection of (query_modality, key_modality) "
            f"pairs, got {type(policy).__name__}"
        ) from None
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(m, int) and not isinstance(m, bool) for m in pair):
            raise TypeError(f"{name}: each pair must be two ints (query_modality, key_modality), got {pair!r}")
        for m in pair:
            if not 0 <= m <= MAX_MODALITY:
                raise ValueError(f"{name}: modality {m} in pair {pair!r} is outside 0..{MAX_MODALITY}")
    return frozenset(pairs)


def policy_bits(policy: PolicyLike, name: str = "policy") -> torch.Tensor:
    """Return int64 tensor [MAX_MODALITY + 1] of look-ahead bitmasks, one per query modality."""
    policy = normalize_policy(policy, name)
    pairs = PRESETS[policy] if isinstance(policy, str) else policy
    if pairs == "all":
        return torch.full((MAX_MODALITY + 1,), (1 << (MAX_MODALITY + 1)) - 1, dtype=torch.int64)
    bits = [0] * (MAX_MODALITY + 1)
    for qm, km in pairs:
        bits[qm] |= 1 << km
    return torch.tensor(bits, dtype=torch.int64)


def uniform_policy(bits: torch.Tensor) -> bool:
    """Whether every query modality that looks ahead looks at the same set of key modalities (`policy_bits`
    rows all 0 or all one value): true of every preset. The Triton kernels' plain rule needs it."""
    nonzero = {int(b) for b in bits.tolist() if b}
    return len(nonzero) <= 1


def describe(policy: PolicyLike) -> str:
    return policy if isinstance(policy, str) else f"pairs{sorted({tuple(p) for p in policy})}"
