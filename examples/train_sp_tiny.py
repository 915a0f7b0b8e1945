"""Sequence-parallel training of a tiny random VLM with MMA, one call: `apply_mma(model, sp_group=..., sp_mode=...)`.

    torchrun --nproc_per_node 2 examples/train_sp_tiny.py                    # CPU: gloo
    torchrun --nproc_per_node 8 examples/train_sp_tiny.py --mode context     # GPUs: nccl
    torchrun --nproc_per_node 2 examples/train_sp_tiny.py --model qwen2_vl --check

Every rank feeds the same whole rows (ids, labels, pixels); the decoder layers run on this rank's positions of a
balanced plan. The loss shares and gradients are summed over the group (`sum_gradients`), so every rank takes the
same optimizer step as one process on the whole rows would. `--check` also runs that one process on rank 0 and
prints the largest loss and gradient difference.
"""
import argparse
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_vlm_classes as cv  # noqa: E402
import tiny_vlms as tv  # noqa: E402


def batch(name):
    inputs, _, _, labels = cv.batch(name)
    world = dist.get_world_size()
    extra = (-inputs["input_ids"].shape[1]) % world  # rows padded on the left to a multiple of the group size
    if extra:
        pad = lambda t, v: torch.cat([t.new_full((t.shape[0], extra), v), t], 1)  # noqa: E731
        for k, v in (("input_ids", 0), ("attention_mask", 0), ("mm_token_type_ids", 0), ("token_type_ids", 0)):
            if k in inputs:
                inputs[k] = pad(inputs[k], v)
        labels = pad(labels, -100)
    return dict(inputs, labels=labels)


def step(model, data, opt=None):
    from mma_kernels.integrations.sequence_parallel import sum_gradients

    model.zero_grad(set_to_none=True)
    out = model(**{k: v.to(model.device) for k, v in data.items()})
    out.loss.backward()
    loss = out.loss.detach()
    if model._mma_state.sp is not None:
        dist.all_reduce(loss)  # the shares sum to the whole rows' loss
        sum_gradients(model)
    if opt is not None:
        opt.step()
    return loss


def main():
    from mma_kernels import apply_mma

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llava", choices=tv.CLASSES)
    ap.add_argument("--mode", default="ulysses", choices=("ulysses", "context"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    torch.set_num_threads(1)

    model = tv.make_model(args.model, "eager").to(dev).train()
    apply_mma(model, answer_token_id=cv.ANS, sp_group=dist.group.WORLD, sp_mode=args.mode)
    data = batch(args.model)
    if args.check:
        ref = tv.make_model(args.model, "eager").to(dev).train()
        apply_mma(ref, answer_token_id=cv.ANS)
        want = step(ref, data)
        grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
        got = step(model, data)
        diff = max((p.grad - grads[n]).abs().max().item() for n, p in model.named_parameters() if p.grad is not None)
        if rank == 0:
            print(f"{args.model} {args.mode} x{dist.get_world_size()}: loss {got.item():.6f} vs one process "
                  f"{want.item():.6f}; max |grad diff| {diff:.1e}")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(args.steps):
        loss = step(model, data, opt)
        if rank == 0:
            plan = model._mma_state.sp.plan
            print(f"step {i}: loss {loss.item():.4f} (rank 0 holds {plan.shard_len} of {plan.seq_len} positions, "
                  f"work imbalance {plan.imbalance:.3f})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
