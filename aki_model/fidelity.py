"""Mask fidelity against the AKI reference: ``python -m aki_model.fidelity [--out DIR]``.

`reference_mask` re-states, independently of `mma_kernels`, what the reference code
(github sony/aki, ``codes/open_flamingo/src/vlm.py``: ``_prepare_inputs_for_forward`` and
``_make_modality_mutual_mask``) computes for one row of ``input_ids``:

- the first ``<|assistant|>`` of the row gives ``question_token_idx`` (0 when there is none);
- the ``<image>`` placeholder at ``img_idx`` becomes ``n`` visual tokens;
- the mask is causal, plus ``mask[img_idx:img_idx+n, img_idx+n:question_token_idx+n] = 1``: the
  image sees the text after it through ``<|assistant|>`` (the ``+n`` end, exclusive, lands just
  past it), an empty range without ``<|assistant|>``;
- key columns of padding are masked (``attention_mask`` 0).

A row with two or more placeholders crashes there (the second pass concatenates the 3-D mask of
the first with a 1-D vector); `reference_mask` returns None for it. `extended_mask` is the rule we
implement beyond it (each image sees the text of its own turn through that turn's
``<|assistant|>``, never another image's tokens); on rows the reference handles it must equal
`reference_mask` (checked by `compare`).

The script builds every prompt format of the reference with `AKIProcessor`, runs
`AKIModel.build_inputs` and the mask the LLM gets (`mma_kernels.MMAMask` over the model's ids),
and counts the cells that differ on non-padding query rows. Padding query rows are not compared:
the reference lets them attend causally, ours sees nothing (contract: their output is 0); no
output of theirs is ever used.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from typing import Dict, List, Optional, Sequence

import torch


def _expand(ids: Sequence[int], attn: Sequence[int], image_id: int, n: int):
    toks, valid = [], []
    for t, a in zip(ids, attn):
        if t == image_id:
            toks += ["img"] * n
            valid += [1] * n  # the reference gives visual tokens attention 1, padded row or not
        else:
            toks.append(t)
            valid.append(int(a))
    return toks, valid


def reference_mask(ids: Sequence[int], attn: Sequence[int], image_id: int, assistant_id: int,
                   n: int) -> Optional[torch.Tensor]:
    """Bool [Lx, Lx] (query, key) of the AKI reference for one row; None where it crashes (>= 2 images)."""
    ids, attn = list(ids), list(attn)
    img = [k for k, t in enumerate(ids) if t == image_id]
    if len(img) > 1:
        return None
    q = next((k for k, t in enumerate(ids) if t == assistant_id), 0)
    _, valid = _expand(ids, attn, image_id, n if img else 1)
    L = len(valid)
    m = torch.ones(L, L, dtype=torch.bool).tril()
    if img:
        s = img[0]
        m[s:s + n, s + n:q + n] = True
    return m & torch.tensor(valid, dtype=torch.bool)[None, :]


def extended_mask(ids: Sequence[int], attn: Sequence[int], image_id: int, assistant_id: int, n: int) -> torch.Tensor:
    """Bool [Lx, Lx]: causal; each image block also sees the text after it up to and including the
    first ``<|assistant|>`` after the block (nothing without one); padding keys masked."""
    toks, valid = _expand(ids, attn, image_id, n)
    L = len(toks)
    m = torch.ones(L, L, dtype=torch.bool).tril()
    i = 0
    while i < L:
        if toks[i] != "img":
            i += 1
            continue
        s = i
        while i < L and toks[i] == "img" and i - s < n:
            i += 1
        end = next((j + 1 for j in range(i, L) if toks[j] == assistant_id), i)
        for j in range(i, end):
            if toks[j] != "img":
                m[s:i, j] = True
    return m & torch.tensor(valid, dtype=torch.bool)[None, :]


def model_masks(model, batch) -> List[torch.Tensor]:
    """Per row, the dense mask the model's LLM uses, cut to the row's own expanded span (its padding
    rows and columns included, as the reference lays the row out)."""
    from mma_kernels import MMAMask

    inp = model.build_inputs(batch["input_ids"], batch.get("pixel_values"), batch["attention_mask"])
    dense = MMAMask(inp["modality_ids"], inp["segment_ids"], policy=model.config.policy).to_dense()
    dense = dense.reshape(dense.shape[0], dense.shape[-2], dense.shape[-1])
    n = model.config.num_image_tokens
    out = []
    for b in range(dense.shape[0]):
        k = int((batch["input_ids"][b] == model.config.image_token_id).sum())
        length = batch["input_ids"].shape[1] + k * (n - 1)
        off = int(inp["index"][b, -1]) + 1 - length  # rows keep the batch's padding side
        out.append(dense[b, off:off + length, off:off + length])
    return out


def compare(model, batch) -> Dict:
    """Cells differing on non-padding query rows, summed over the batch: vs the reference (None if
    it crashes on some row) and vs the extended rule; also checks that the two oracles agree."""
    cfg = model.config
    ours = model_masks(model, batch)
    res = {"rows": len(ours), "cells_compared": 0, "differ_reference": 0, "differ_extended": 0,
           "reference_crashes": False, "image_rows_with_lookahead": 0}
    for b, m in enumerate(ours):
        ids, attn = batch["input_ids"][b].tolist(), batch["attention_mask"][b].tolist()
        ext = extended_mask(ids, attn, cfg.image_token_id, cfg.assistant_token_id, cfg.num_image_tokens)
        _, valid = _expand(ids, attn, cfg.image_token_id, cfg.num_image_tokens)
        rows = torch.tensor(valid, dtype=torch.bool)
        res["cells_compared"] += int(rows.sum()) * m.shape[1]
        res["differ_extended"] += int((m[rows] != ext[rows]).sum())
        res["image_rows_with_lookahead"] += int(m.triu(1).any(dim=1).sum())
        ref = reference_mask(ids, attn, cfg.image_token_id, cfg.assistant_token_id, cfg.num_image_tokens)
        if ref is None:
            res["reference_crashes"] = True
        else:
            res["differ_reference"] += int((m[rows] != ref[rows]).sum())
            if not torch.equal(ref[rows], ext[rows]):
                raise AssertionError("extended rule differs from the reference on a row the reference handles")
    if res["reference_crashes"]:
        res["differ_reference"] = None
    return res


def formats(image_size: int = 32):
    """(name, conversations or captions, images, kwargs) for every prompt format of the reference."""
    from PIL import Image

    img = Image.new("RGB", (image_size, image_size), (200, 40, 40))
    q, a = "what color is the shape ?", "red"
    single = [{"role": "user", "content": f"<image>\n{q}"}, {"role": "assistant", "content": a}]
    return [
        ("single image, training template (BOS ... answer EOS)", [single], [[img]], {}),
        ("prompt only (demo / eval: ends with <|assistant|>\\n)", [single[:1]], [[img]],
         {"add_generation_prompt": True}),
        ("image with no question", [[{"role": "user", "content": "<image>\n"}, {"role": "assistant", "content": a}]],
         [[img]], {}),
        ("text only (no image)", [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]], [[]], {}),
        ("caption, no <|assistant|> (<image>{caption}<|endofchunk|>)", "captions", ["a red circle ."], {}),
        ("right-padded batch (training)", [single, [{"role": "user", "content": "<image>\nwhat shape is in this image ?"},
                                                    {"role": "assistant", "content": "a red circle"}]],
         [[img], [img]], {"padding_side": "right"}),
        ("left-padded batch (generation)", [single[:1], [{"role": "user", "content": "<image>\nis it red ?"}]],
         [[img], [img]], {"add_generation_prompt": True, "padding_side": "left"}),
        ("two images, one turn (extension)", [[{"role": "user", "content": f"<image>\n<image>\n{q}"},
                                              {"role": "assistant", "content": a}]], [[img, img]], {}),
        ("two turns, an image each (extension)", [[{"role": "user", "content": f"<image>\n{q}"},
                                                   {"role": "assistant", "content": a},
                                                   {"role": "user", "content": f"<image>\n{q}"},
                                                   {"role": "assistant", "content": a}]], [[img, img]], {}),
    ]


def run(num_image_tokens: int = 144) -> List[Dict]:
    from .config import AKIConfig
    from .model import AKIModel
    from .processor import AKIProcessor

    torch.manual_seed(0)
    proc = AKIProcessor(image_size=32)
    model = AKIModel(AKIConfig.tiny(vocab_size=len(proc.tokenizer), num_image_tokens=num_image_tokens)).eval()
    rows = []
    for name, conv, imgs, kw in formats(model.config.image_size):
        if conv == "captions":
            batch = proc.captions(imgs, _caption_images(model, len(imgs)))
        else:
            batch = proc(conv, imgs, **kw)
        with torch.no_grad():
            r = compare(model, batch)
        rows.append({"case": name, **r})
    return rows


def _caption_images(model, k: int):
    from PIL import Image

    s = model.config.image_size
    return [Image.new("RGB", (s, s), (40, 80, 220)) for _ in range(k)]


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    p = argparse.ArgumentParser(prog="python -m aki_model.fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-image-tokens", type=int, default=144, help="visual tokens per image (AKI-4B: 144)")
    p.add_argument("--out", default=None, help="directory for fidelity.json and fidelity.md (default: print only)")
    args = p.parse_args(argv)
    rows = run(args.num_image_tokens)
    lines = ["| case | rows | cells compared | differ from reference | differ from extended rule | image rows with look-ahead |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ref = "reference crashes" if r["differ_reference"] is None else str(r["differ_reference"])
        lines.append(f"| {r['case']} | {r['rows']} | {r['cells_compared']} | {ref} | {r['differ_extended']} | "
                     f"{r['image_rows_with_lookahead']} |")
    print("\n".join(lines))
    if args.out:
        import transformers

        os.makedirs(args.out, exist_ok=True)
        meta = {"command": " ".join(["python -m aki_model.fidelity"] + list(sys.argv[1:] if argv is None else argv)),
                "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "versions": {"python": platform.python_version(), "torch": torch.__version__,
                             "transformers": transformers.__version__},
                "num_image_tokens": args.num_image_tokens, "rows": rows}
        with open(os.path.join(args.out, "fidelity.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        with open(os.path.join(args.out, "fidelity.md"), "w", encoding="utf-8") as f:
            f.write(f"Command: `{meta['command']}` ({meta['date_utc']}, {meta['versions']})\n\n" + "\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
