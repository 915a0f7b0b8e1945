"""Answer a question about an image with a trained checkpoint:

    python -m aki_model.generate --checkpoint DIR --image FILE --question "what color is the shape ?"

``--image`` may be repeated (several images, in order, before the question). Greedy decoding by
default; ``--sample`` with ``--temperature``/``--top-k``/``--top-p`` samples instead.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aki_model.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="directory written by aki_model.train / save_pretrained")
    p.add_argument("--image", action="append", required=True, help="image file (repeat for several images)")
    p.add_argument("--question", required=True)
    p.add_argument("--system", default=None, help="system prompt (default: the training one)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attention", choices=["mma", "causal"], default=None,
                   help="override the checkpoint's attention (default: as trained)")
    p.add_argument("--device", default=None)
    p.add_argument("--show-prompt", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    from PIL import Image

    from .data import SYSTEM_PROMPT
    from .model import AKIModel
    from .processor import AKIProcessor

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {"attention": args.attention} if args.attention else {}
    model = AKIModel.from_pretrained(args.checkpoint, device=device, **overrides)
    processor = AKIProcessor.from_pretrained(args.checkpoint)
    images = [Image.open(f).convert("RGB") for f in args.image]
    question = args.question
    if "<image>" not in question:
        question = "<image>\n" * len(images) + question
    conv = [{"role": "system", "content": args.system if args.system is not None else SYSTEM_PROMPT},
            {"role": "user", "content": question}]
    batch = processor(conv, images, add_generation_prompt=True)
    if args.show_prompt:
        print(processor.prompt_text(conv, add_generation_prompt=True))
    kw = {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p} if args.sample else {}
    seq = model.generate(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                         max_new_tokens=args.max_new_tokens, **kw)
    answer = processor.decode(seq[0, batch["input_ids"].shape[1]:])
    print(answer)
    return answer


if __name__ == "__main__":
    main()
