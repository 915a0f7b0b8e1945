"""Sequence and context parallelism for MMA on `torch.distributed` (docs/distributed.md).

Every rank holds the whole row's ids (an `MMAMask`, O(L) ints) and its shard of the activations, at the
positions a `ShardPlan` gives it. `ulysses_attention` scatters heads (all-to-all), `context_parallel_attention`
keeps the query shard and gathers K/V. Outputs, lse and gradients equal the single-process `mma_attention`
on the whole row.
"""
from .comm import gather_row
from .context import context_parallel_attention
from .plan import ShardPlan, mask_fingerprint, pad_to_multiple, shard_plan
from .ulysses import ulysses_attention
from ..attention import mma_attention_at

__all__ = ["shard_plan", "ShardPlan", "ulysses_attention", "context_parallel_attention", "pad_to_multiple",
           "mask_fingerprint", "mma_attention_at", "gather_row"]
