"""Sequence parallelism for a patched Hugging Face model: ``apply_mma(model, sp_group=..., sp_mode=...)``.

Every rank of ``sp_group`` calls the model on the *whole* row (input ids, labels, pixel inputs: O(L) ints plus
the images), so the vision tower, the image-feature merge and the M-RoPE positions run as on one process, with
no model-specific code. At the entry of the language model (the decoder stack) the embeddings and position ids
are cut to this rank's positions of a `ShardPlan` balanced on the whole row's `MMAMask`; every decoder layer then
runs on the shard, its attention through `ulysses_attention` or `context_parallel_attention` with the whole
row's mask. The model returns this rank's logits ``[B, L/P, V]`` (at ``plan.positions(rank)``) and, with labels,
this rank's share of the whole row's loss: the shares summed over the group are the single-process loss, and so
are the parameter gradients summed over the group (`sum_gradients`, or DDP over the group with the loss scaled by
the group size, since DDP averages).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

MODES = ("ulysses", "context")


class SPState:
    """What a sequence-parallel forward in flight shares with the attention layers and the decoder hook."""

    def __init__(self, group, mode: str):
        if mode not in MODES:
            raise ValueError(f"sp_mode: expected one of {MODES}, got {mode!r}")
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("sp_group: torch.distributed is not initialized (init_process_group first, e.g. under "
                             "torchrun)")
        self.group, self.mode = group, mode
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.plan = None  # of the last forward pass (kept for gradient checkpointing's recomputation)
        self.verified = False

    def begin(self, mask):
        from ..distributed import shard_plan

        L = mask.seq_len
        if L % self.world:
            raise ValueError(f"input_ids: sequence length {L} is not a multiple of the sequence-parallel group size "
                             f"{self.world}; pad the rows (e.g. mma_kernels.distributed.pad_to_multiple, padding "
                             f"marked in attention_mask)")
        self.plan = shard_plan(mask, self.world)
        self.verified = False
        return self.plan

    def attention(self, query, key, value, mask, scale, backend, window):
        """One layer's attention on this rank's shard ([B, H, L/P, D]); verifies the ranks agree once per forward."""
        from ..distributed import context_parallel_attention, ulysses_attention

        op = ulysses_attention if self.mode == "ulysses" else context_parallel_attention
        verify, self.verified = not self.verified, True
        return op(query, key, value, mask, self.plan, self.group, verify=verify, scale=scale, backend=backend,
                  window=window)

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.index_select(dim, self.plan.positions(self.rank, x.device))

    def shard_decoder_inputs(self, module, kwargs):
        """Forward pre-hook of the decoder stack: the whole row's embeddings / positions -> this rank's shard."""
        if self.plan is None:
            return None
        emb = kwargs.get("inputs_embeds", None)
        if emb is None:
            ids = kwargs.get("input_ids", None)
            if ids is None:
                raise ValueError("sequence parallel: the decoder got neither input_ids nor inputs_embeds")
            emb = module.get_input_embeddings()(ids)
        B, L = emb.shape[0], emb.shape[1]
        if L != self.plan.seq_len:
            raise ValueError(f"sequence parallel: the decoder got {L} positions, the plan covers {self.plan.seq_len}")
        pos = kwargs.get("position_ids", None)
        if pos is None:
            pos = torch.arange(L, device=emb.device).expand(B, L)
        kwargs.update(input_ids=None, inputs_embeds=self.shard(emb, 1), position_ids=self.shard(pos, pos.dim() - 1),
                      attention_mask=None, use_cache=False)  # padding is in the whole row's MMAMask
        for name in ("cache", "past_key_values"):
            if kwargs.get(name, None) is not None:
                raise ValueError(f"{name}: a KV cache is not supported with sp_group (training only)")
            kwargs.pop(name, None)
        return (), kwargs

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """This rank's share of the causal-LM loss of the whole row: labels shifted on the whole row, cut to the
        shard, summed, divided by the whole row's number of supervised tokens."""
        shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), ignore_index)], dim=1)
        n = (shifted != ignore_index).sum().clamp(min=1)
        mine = self.shard(shifted.to(logits.device), 1)
        total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), mine.reshape(-1),
                                ignore_index=ignore_index, reduction="sum")
        return total / n


def decoder_stack(model, text_cfg):
    """The module that embeds and runs the decoder layers of the language model (its ``layers``)."""
    found = None
    for m in model.modules():
        if getattr(m, "config", None) is text_cfg and isinstance(getattr(m, "layers", None), torch.nn.ModuleList):
            found = m
    if found is None:
        raise ValueError(f"sp_group: cannot find the decoder stack (a module with .layers and the text config) of "
                         f"{type(model).__name__}")
    return found


def sum_gradients(model, group=None) -> None:
    """Sum every parameter gradient over the sequence-parallel group (all_reduce), so that each rank holds the
    whole row's gradient: the single-process one."""
    import torch.distributed as dist

    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)


def install(model, text_cfg, state: Optional[SPState]):
    """Hook the decoder stack once; the hook only acts while a sequence-parallel forward is in flight."""
    if state is None or getattr(model, "_mma_sp_hook", None) is not None:
        return
    stack = decoder_stack(model, text_cfg)
    model._mma_sp_hook = stack.register_forward_pre_hook(
        lambda mod, args, kwargs: model._mma_state.sp.shard_decoder_inputs(mod, kwargs)
        if model._mma_state.sp is not None else None, with_kwargs=True)
