"""Fine-tune a tiny random LLaVA with modality-mutual attention, using `transformers.Trainer` and packing.

    python examples/finetune_vlm_tiny.py [--steps 40]

- `apply_mma(model)`: the image token comes from the config; only the language model switches to MMA
  (the CLIP vision tower keeps its own attention).
- `MMADataCollatorWithFlattening`: samples are packed padding-free into one row (one document each),
  pixel values concatenated; each answer's supervised tokens (labels) start new segments, so images
  see their question but never the answer, whatever the chat template.
- Task: each image is a flat colour (one of 4); the answer names the colour, so it needs the image.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_vlms as tv  # noqa: E402

from mma_kernels import MMADataCollatorWithFlattening, apply_mma  # noqa: E402

COLOURS = 4


def sample(g):
    """One chat sample: <s> USER: <image>x4 what colour ? ASSISTANT: <colour> </s>; labels on the answer."""
    c = int(torch.randint(COLOURS, (1,), generator=g))
    pixels = torch.full((1, 3, 16, 16), -1.0 + 2.0 * c / (COLOURS - 1)) + 0.05 * torch.randn(1, 3, 16, 16, generator=g)
    q = torch.randint(30, 60, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
    ids = [1, 7] + [tv.IMG] * 4 + q + [8, 9] + [20 + c, 2]  # 8, 9: a two-token "ASSISTANT:" marker
    labels = [-100] * (len(ids) - 2) + [20 + c, 2]
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = tv.make_model("llava", "eager")
    model = apply_mma(model)  # the one line: image token from the config, segments from labels
    g = torch.Generator().manual_seed(0)
    data = [sample(g) for _ in range(args.steps * args.batch)]
    collate = MMADataCollatorWithFlattening(image_token_id=tv.IMG, extra_keys=("pixel_values",))
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps,
                                  learning_rate=args.lr, logging_steps=1, report_to=[], save_strategy="no",
                                  remove_unused_columns=False, use_cpu=True, dataloader_num_workers=0, seed=0)
        trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate)
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    k = max(1, len(losses) // 5)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    print(f"loss: first {k} steps {first:.4f} -> last {k} steps {last:.4f}")
    return first, last, model


if __name__ == "__main__":
    main()
