"""Token layouts for the benchmarks: per-token ids (modality, segment, document) of packed rows.

Modelled on AKI / LLaVA-style training data: each packed sample (one document) is

    system text | user turn: image(s) of 144 tokens + question | assistant: answer | (more turns)

Each user turn (its images and its question) is one mutual segment; each answer is its own
segment, so nobody sees an answer early. Samples are packed into a row until the next one does
not fit; the rest of the row is padding (-1). Segment ids are unique over the row, so a segment
never spans two documents (the contract in /work/shared/design/semantics.md).

Layouts:
  ``aki``          realistic packing: 1-3 images per sample, 30% of samples multi-turn.
  ``many_short``   worst case for block skipping: many short samples (one image each, little text),
                   document boundaries falling inside most tiles.
  ``one_image``    one 576-token image per sample (LLaVA-1.5 / CLIP-336 tiles), one turn.
  ``three_images`` three 144-token images per sample, one turn.
  ``two_turns``    two turns per sample, one 144-token image in each.

Long-document layout (`LONG_LAYOUTS`, not in the packed defaults `LAYOUTS`):
  ``long_video``   one document filling the row: a video chat, each user turn a 16-frame clip (144 tokens per
                   frame, each after a short timestamp tag) and its question (one segment), then the answer.
                   The long-context case: almost every tile is fully allowed, where the 128-wide key and 64-row
                   dK/dV tiles pay (benchmarks/results/static/cost_sm90_bf16_d128_long_*.md).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Tuple

import torch

IMAGE_TOKENS = 144
ONE_IMAGE_TOKENS = 576  # the `one_image` layout's image
TEXT, IMAGE, PAD = 0, 1, -1
LAYOUTS = ("aki", "many_short", "one_image", "three_images", "two_turns")
LONG_LAYOUTS = ("long_video",)
CLIP_FRAMES = 16  # frames per `long_video` clip

# One span: (modality, length, segment key inside the sample)
Span = Tuple[int, int, int]


@dataclass
class Layout:
    name: str
    modality_ids: torch.Tensor  # int32 [B, L]
    segment_ids: torch.Tensor  # int32 [B, L]
    document_ids: torch.Tensor  # int32 [B, L]

    def to(self, device) -> "Layout":
        return Layout(self.name, *(t.to(device) for t in (self.modality_ids, self.segment_ids, self.document_ids)))

    def valid_rows(self) -> torch.Tensor:
        return self.modality_ids != PAD


def _aki_sample(rng: random.Random) -> List[Span]:
    spans: List[Span] = [(TEXT, rng.randint(10, 40), 0)]  # system prompt
    turns = rng.choice([2, 3]) if rng.random() < 0.3 else 1
    seg = 0
    for t in range(turns):
        n_img = rng.choice([1, 1, 1, 2, 3]) if t == 0 else rng.choice([0, 0, 1])
        for _ in range(n_img):
            spans += [(TEXT, rng.randint(2, 6), seg), (IMAGE, IMAGE_TOKENS, seg)]  # "<|image_k|>" tag + image
        spans.append((TEXT, rng.randint(16, 96), seg))  # question and <|end|>
        spans.append((TEXT, rng.randint(8, 240), seg + 1))  # <|assistant|> answer <|end|>
        seg += 2
    return spans


def _short_sample(rng: random.Random) -> List[Span]:
    return [(TEXT, rng.randint(2, 8), 0), (IMAGE, IMAGE_TOKENS, 0), (TEXT, rng.randint(6, 20), 0),
            (TEXT, rng.randint(3, 12), 1)]


def _turns_sample(rng: random.Random, images_per_turn, image_tokens: int = IMAGE_TOKENS) -> List[Span]:
    """System text, then per turn: its images (each after a short tag) and question (one segment), the answer."""
    spans: List[Span] = [(TEXT, rng.randint(10, 40), 0)]
    for t, n_img in enumerate(images_per_turn):
        seg = 2 * t
        for _ in range(n_img):
            spans += [(TEXT, rng.randint(2, 6), seg), (IMAGE, image_tokens, seg)]
        spans.append((TEXT, rng.randint(16, 96), seg))
        spans.append((TEXT, rng.randint(8, 240), seg + 1))
    return spans


_SAMPLERS = {"aki": _aki_sample, "many_short": _short_sample,
             "one_image": lambda rng: _turns_sample(rng, [1], image_tokens=ONE_IMAGE_TOKENS),
             "three_images": lambda rng: _turns_sample(rng, [3]),
             "two_turns": lambda rng: _turns_sample(rng, [1, 1])}


def _pack_row(name: str, seqlen: int, rng: random.Random):
    mod, seg, doc = [], [], []
    seg_base, doc_id = 0, 0
    while True:
        spans = _SAMPLERS[name](rng)
        n = sum(s[1] for s in spans)
        room = seqlen - len(mod)
        if n > room:
            if mod or room < 64:  # the row already holds samples: pad the rest
                break
            # a row shorter than one sample: keep the sample's start (tiny CPU sizes)
        for m, length, s in spans:
            length = min(length, seqlen - len(mod))
            mod += [m] * length
            seg += [seg_base + s] * length
            doc += [doc_id] * length
        seg_base += max(s for _, _, s in spans) + 1
        doc_id += 1
        if len(mod) >= seqlen:
            break
    pad = seqlen - len(mod)
    return mod + [PAD] * pad, seg + [seg_base] * pad, doc + [doc_id] * pad


def _long_video_row(seqlen: int, rng: random.Random):
    """One document of `seqlen` tokens: system text, then turns of a clip and its question, and the answer."""
    spans = _turns_sample(rng, [])  # the system text
    seg = 0
    while sum(n for _, n, _ in spans) < seqlen:
        for _ in range(CLIP_FRAMES):
            spans += [(TEXT, rng.randint(2, 6), seg), (IMAGE, IMAGE_TOKENS, seg)]
        spans += [(TEXT, rng.randint(16, 96), seg), (TEXT, rng.randint(8, 240), seg + 1)]
        seg += 2
    mod = [m for m, n, _ in spans for _ in range(n)][:seqlen]
    sid = [s for _, n, s in spans for _ in range(n)][:seqlen]
    return mod, sid, [0] * seqlen


def make_layout(name: str, batch: int, seqlen: int, seed: int = 0) -> Layout:
    """Ids for `batch` rows of `seqlen` tokens (CPU int32 tensors; deterministic for a seed): packed samples
    (`LAYOUTS`), or one long document per row (`LONG_LAYOUTS`)."""
    if name not in _SAMPLERS and name not in LONG_LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS + LONG_LAYOUTS}, got {name!r}")
    rng = random.Random(f"{name}-{seqlen}-{seed}")
    if name == "long_video":
        rows = [_long_video_row(seqlen, rng) for _ in range(batch)]
    else:
        rows = [_pack_row(name, seqlen, rng) for _ in range(batch)]
    mod, seg, doc = (torch.tensor([r[i] for r in rows], dtype=torch.int32) for i in range(3))
    return Layout(name, mod, seg, doc)


def causal_layout(batch: int, seqlen: int) -> Layout:
    """Plain causal over the whole row (what `sdpa_causal` and `flash_attn` compute)."""
    z = torch.zeros(batch, seqlen, dtype=torch.int32)
    return Layout("causal", z, torch.arange(seqlen, dtype=torch.int32).expand(batch, seqlen).contiguous(), z)
