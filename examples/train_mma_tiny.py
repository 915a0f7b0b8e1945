"""Train a Hugging Face causal LM with modality-mutual attention on a tiny built-in multimodal-shaped dataset.

    python examples/train_mma_tiny.py                      # tiny random Llama, CPU (GPU if present)
    python examples/train_mma_tiny.py --model path/or/hub-id --steps 100
    torchrun --nproc_per_node 2 examples/train_mma_tiny.py --ddp   # one process per GPU (gloo on CPU)

Each sample looks like an AKI chat turn: text, a run of image placeholder tokens, the question,
then the answer token and the answer. Image tokens attend to their question (MMA), never to the
answer. Samples are packed padding-free with `MMADataCollatorWithFlattening`.
"""
import argparse
import os

import torch

import mma_kernels
from mma_kernels import MMADataCollatorWithFlattening, apply_mma

IMAGE, ANSWER = 5, 6  # token ids of the image placeholder and of the token opening an answer


def dataset(n, vocab, seed=0):
    """Synthetic samples: the answer names how many image tokens the sample has (4 copies of 10 + count)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        n_img, n_q = int(torch.randint(4, 9, (1,), generator=g)), int(torch.randint(4, 9, (1,), generator=g))
        q = torch.randint(10, vocab, (n_q,), generator=g)
        ids = torch.cat([torch.tensor([1, 2]), torch.full((n_img,), IMAGE), q, torch.tensor([ANSWER]),
                         torch.full((4,), 10 + n_img)])
        labels = ids.clone()
        labels[: len(ids) - 4] = -100  # train on the answer only
        out.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="HF model id/path (default: a tiny random Llama)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--ddp", action="store_true", help="DistributedDataParallel (launch with torchrun)")
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, LlamaConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = 0, 1
    if args.ddp:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    torch.manual_seed(0)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    else:
        cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        model = AutoModelForCausalLM.from_config(cfg)
    model = apply_mma(model, image_token_id=IMAGE, answer_token_id=ANSWER).to(device)  # the one-line switch
    if args.ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    vocab = min(128, model.config.vocab_size if not args.ddp else model.module.config.vocab_size)
    data = dataset(args.steps * args.batch * world, vocab)
    collate = MMADataCollatorWithFlattening(image_token_id=IMAGE, answer_token_id=ANSWER)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model.train()
    for step in range(args.steps):
        start = (step * world + rank) * args.batch
        batch = {k: v.to(device) for k, v in collate(data[start:start + args.batch]).items()}
        loss = model(**batch).loss  # packed row, MMA ids and document ids carried by the collator
        loss.backward()
        opt.step()
        opt.zero_grad()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}")
    if args.ddp:
        torch.distributed.destroy_process_group()
    return loss.item()


if __name__ == "__main__":
    main()
