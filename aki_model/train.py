"""Train an AKI model on the synthetic shapes task: ``python -m aki_model.train [--help]``.

The defaults train a small model from scratch on CPU (GPU when present) in a few minutes; the
loss log goes to ``OUT/loss_log.csv`` and the checkpoint (weights, config, tokenizer) to ``OUT``.
``--attention causal`` trains the ablation of the AKI paper with everything else unchanged.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from typing import Dict, List, Optional

import torch

from .config import AKIConfig
from .data import SyntheticShapes
from .model import AKIModel
from .processor import AKIProcessor
from .tokenizer import build_tokenizer


def small_config(attention: str = "mma", vocab_size: int = 256, **overrides) -> AKIConfig:
    """The default training model: ~0.7M parameters, 32 px images in 8 px patches (a 4 x 4 grid: 16 px
    patches leave 4 features per image and lose where the shape is), 16 visual tokens, a 3-layer Phi-3."""
    base = AKIConfig.tiny(vocab_size=vocab_size)
    cfg = base.to_dict()
    cfg["vision_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                patch_size=8)
    cfg["text_config"].update(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2)
    cfg.update(num_image_tokens=16, resampler_depth=1, resampler_heads=4, resampler_dim_head=16,
               attention=attention, freeze_vision_encoder=False)
    cfg.update(overrides)
    return AKIConfig.from_dict(cfg)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aki_model.train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="checkpoints/aki-synthetic", help="checkpoint directory")
    p.add_argument("--attention", choices=["mma", "causal"], default="mma",
                   help="mma: image tokens see their question (AKI); causal: the ablation")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate; 3e-3 collapses the visual tokens to an image-independent constant")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps, then cosine decay")
    p.add_argument("--task", choices=["describe", "count", "presence", "select"], default="describe",
                   help="describe: one shape, its colour/shape/position; count: 2-4 shapes, 'how many red shapes "
                        "are there ?'; presence: the same scenes, 'is there a red shape ?'; select: two images, "
                        "'what color is the second shape ?'")
    p.add_argument("--image-tokens", type=int, default=None, help="visual tokens per image (default: the config's)")
    p.add_argument("--llm-layers", type=int, default=None, help="LLM decoder layers (default: the config's)")
    p.add_argument("--max-images", type=int, default=1, help="images per question: 1..N")
    p.add_argument("--max-turns", type=int, default=1, help="user/assistant turns per conversation: 1..N")
    p.add_argument("--config", choices=["small", "tiny"], default="small", help="model size (from scratch)")
    p.add_argument("--freeze-vision", action="store_true", help="freeze the vision encoder (AKI fine-tuning setup)")
    p.add_argument("--eval-examples", type=int, default=256, help="held-out examples for the final accuracy")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 0 = torch's choice. The model is tiny: on 2 cores, two threads were "
                        "~1.5x faster than one when the machine was idle but ~10x slower when it was shared")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def to_device(batch: Dict[str, torch.Tensor], device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: AKIModel, processor: AKIProcessor, data: SyntheticShapes, n: int, batch_size: int = 64) -> Dict:
    """Greedy answers on ``n`` held-out examples (questions of the last turn): exact-match accuracy
    and mean loss over the answer tokens."""
    model.eval()
    correct, total, losses = 0, 0, []
    by_kind: Dict[str, List[int]] = {}
    while total < n:
        exs = data.batch(min(batch_size, n - total))
        full = to_device(processor([e["conversation"] for e in exs], [e["images"] for e in exs]), model.device)
        losses.append(float(model(**full).loss))
        prompts = [e["conversation"][:-1] for e in exs]
        g = processor(prompts, [e["images"] for e in exs], add_generation_prompt=True, padding_side="left")
        seq = model.generate(g["input_ids"], g.get("pixel_values"), g["attention_mask"], max_new_tokens=4)
        answers = processor.batch_decode(seq[:, g["input_ids"].shape[1]:])
        for e, a in zip(exs, answers):
            ok = int(a == e["conversation"][-1]["content"])
            correct += ok
            k = by_kind.setdefault(question_kind(e["conversation"][-2]["content"]), [0, 0])
            k[0] += ok
            k[1] += 1
        total += len(exs)
    model.train()
    return {"accuracy": correct / max(total, 1), "loss": sum(losses) / max(len(losses), 1), "examples": total,
            "accuracy_by_kind": {k: round(c / n, 3) for k, (c, n) in sorted(by_kind.items())}}


def question_kind(question: str) -> str:
    """"color", "shape", "position", "yes/no" (task "describe") or "count" (task "count")."""
    q = question.replace("<image>", " ").split()
    if q[:2] == ["how", "many"]:
        return "count"
    if q[:2] == ["is", "there"]:
        return "presence"
    if q[:2] == ["what", "color"]:
        return "color"
    if q[:2] == ["what", "shape"]:
        return "shape"
    return "position" if q[:1] == ["where"] else "yes/no"


def train(args: argparse.Namespace) -> Dict:
    from tqdm.auto import tqdm

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    if args.config == "small":
        config = small_config(args.attention, vocab_size=len(tokenizer), freeze_vision_encoder=args.freeze_vision)
    else:
        config = AKIConfig.tiny(vocab_size=len(tokenizer), attention=args.attention,
                                freeze_vision_encoder=args.freeze_vision)
    if args.image_tokens or args.llm_layers:
        d = config.to_dict()
        if args.image_tokens:
            d["num_image_tokens"] = args.image_tokens
        if args.llm_layers:
            d["text_config"]["num_hidden_layers"] = args.llm_layers
        config = AKIConfig.from_dict(d)
    processor = AKIProcessor(tokenizer, image_size=config.image_size)
    model = AKIModel(config).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    data = SyntheticShapes(config.image_size, args.max_images, args.max_turns, seed=args.seed, task=args.task)
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "loss_log.csv")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"AKI ({args.attention}, task {args.task}) {n_params / 1e6:.2f}M parameters, "
          f"{config.num_image_tokens} visual tokens/image, {config.text_config['num_hidden_layers']} LLM layers, "
          f"device {device}, {args.steps} steps x batch {args.batch_size}; log {log_path}")
    t0 = time.time()
    history = []
    window: List[float] = []
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("step,loss,lr,seconds\n")
        bar = tqdm(range(args.steps), desc="train", disable=args.no_progress, dynamic_ncols=True)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            exs = data.batch(args.batch_size)
            batch = to_device(processor([e["conversation"] for e in exs], [e["images"] for e in exs]), device)
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            val = loss.item()
            history.append(val)
            window.append(val)
            log.write(f"{step},{val:.5f},{lr_at(step):.6g},{time.time() - t0:.2f}\n")
            if (step + 1) % args.log_every == 0 or step == 0 or step + 1 == args.steps:
                log.flush()
                avg = sum(window) / len(window)
                window.clear()
                bar.set_postfix(loss=f"{avg:.3f}")
                if args.no_progress:
                    print(f"step {step + 1}/{args.steps} loss {avg:.4f}", flush=True)
    train_time = time.time() - t0
    model.save_pretrained(args.out, processor)
    eval_data = SyntheticShapes(config.image_size, args.max_images, args.max_turns, seed=args.seed + 10_000,
                                task=args.task)
    result = evaluate(model, processor, eval_data, args.eval_examples) if args.eval_examples else {}
    first = sum(history[:10]) / min(10, len(history))
    last = sum(history[-10:]) / min(10, len(history))
    summary = {"attention": args.attention, "task": args.task, "seed": args.seed, "steps": args.steps,
               "batch_size": args.batch_size, "lr": args.lr, "num_image_tokens": config.num_image_tokens,
               "llm_layers": config.text_config["num_hidden_layers"], "parameters": n_params,
               "first_loss": history[0], "first10_mean": first, "last10_mean": last, "last_loss": history[-1],
               "train_seconds": round(train_time, 1), "eval": result, "checkpoint": args.out}
    with open(os.path.join(args.out, "train_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(f"loss {history[0]:.3f} -> {history[-1]:.3f} (mean of first/last 10 steps: {first:.3f} -> {last:.3f}) "
          f"in {train_time:.0f}s")
    if result:
        print(f"held-out greedy accuracy {result['accuracy']:.3f} on {result['examples']} examples, "
              f"answer loss {result['loss']:.3f}; by question: "
              + ", ".join(f"{k} {v:.2f}" for k, v in result["accuracy_by_kind"].items()))
    print(f"checkpoint saved to {args.out}")
    return summary


def main(argv: Optional[List[str]] = None) -> Dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
