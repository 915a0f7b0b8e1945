"""`AKIProcessor`: (images, conversation) -> model inputs, in AKI's prompt format.

```
<|system|>\\n{system}<|end|>\\n<|user|>\\n<image>\\n{question}<|end|>\\n<|assistant|>\\n{answer}<|end|>\\n
```

Each ``<image>`` is one placeholder token in ``input_ids``; the model replaces it by
``num_image_tokens`` visual tokens. Labels cover the answer tokens and the ``<|end|>`` that closes
each answer (so that generation learns to stop); everything else is -100.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .tokenizer import SPECIAL_IDS, build_tokenizer

IGNORE_INDEX = -100
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
ROLES = ("system", "user", "assistant")


def preprocess_image(image: Union[Image.Image, np.ndarray, str], size: int,
                     mean=SIGLIP_MEAN, std=SIGLIP_STD) -> torch.Tensor:
    """SigLIP preprocessing: RGB, bicubic resize to size x size, scale to [0, 1], normalise.
    Returns float32 [3, size, size]."""
    if isinstance(image, str):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class AKIProcessor:
    """Turns images and conversations into ``input_ids``, ``attention_mask``, ``labels`` and
    ``pixel_values`` [B, images, 3, H, W] (rows with fewer images are zero-padded; the model uses
    the k-th image of a row for the k-th ``<image>`` placeholder of that row).

    Args:
        tokenizer: a Hugging Face tokenizer that knows the chat tokens and ``<image>``; default
            `aki_model.tokenizer.build_tokenizer()`.
        image_size: side of the square images given to the vision encoder.
    """

    def __init__(self, tokenizer=None, image_size: int = 32):
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
        self.image_size = image_size
        t = self.tokenizer
        self.image_token_id = t.convert_tokens_to_ids("<image>")
        self.assistant_token_id = t.convert_tokens_to_ids("<|assistant|>")
        self.end_token_id = t.convert_tokens_to_ids("<|end|>")
        self.pad_token_id = t.pad_token_id if t.pad_token_id is not None else SPECIAL_IDS["<pad>"]
        self._role_ids = {r: t.convert_tokens_to_ids(f"<|{r}|>") for r in ROLES}
        self._nl = t.encode("\n", add_special_tokens=False)

    # ------------------------------------------------------------------ text
    def _enc(self, text: str) -> List[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def encode_conversation(self, conversation: Sequence[Dict[str, str]], add_generation_prompt: bool = False):
        """Token ids and labels (lists) of one conversation: a list of ``{"role", "content"}`` with
        roles system/user/assistant; ``<image>`` in a user turn's content marks an image."""
        ids: List[int] = []
        labels: List[int] = []
        for turn in conversation:
            role, content = turn["role"], turn["content"]
            if role not in ROLES:
                raise ValueError(f"conversation role: expected one of {ROLES}, got {role!r}")
            if role != "user" and "<image>" in content:
                raise ValueError("<image> may only appear in user turns (images attend to their turn's question)")
            head = [self._role_ids[role]] + self._nl
            body = self._enc(content) + [self.end_token_id]
            ids += head + body + self._nl
            if role == "assistant":
                labels += [IGNORE_INDEX] * len(head) + body + [IGNORE_INDEX] * len(self._nl)
            else:
                labels += [IGNORE_INDEX] * (len(head) + len(body) + len(self._nl))
        if add_generation_prompt:
            head = [self._role_ids["assistant"]] + self._nl
            ids += head
            labels += [IGNORE_INDEX] * len(head)
        return ids, labels

    def prompt_text(self, conversation: Sequence[Dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as AKI's prompt string (for display)."""
        s = "".join(f"<|{t['role']}|>\n{t['content']}<|end|>\n" for t in conversation)
        return s + ("<|assistant|>\n" if add_generation_prompt else "")

    # ------------------------------------------------------------------ batch
    def __call__(
        self,
        conversations: Union[Sequence[Dict[str, str]], Sequence[Sequence[Dict[str, str]]]],
        images: Optional[Sequence] = None,
        add_generation_prompt: bool = False,
        padding_side: str = "right",
        return_tensors: str = "pt",
    ) -> Dict[str, torch.Tensor]:
        """Batch of conversations (or one) with their images (a list of images per conversation,
        or a flat list for one conversation). ``padding_side="left"`` for generation."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
            images = [images] if images is not None else None
        if images is None:
            images = [[] for _ in conversations]
        if len(images) != len(conversations):
            raise ValueError(f"got {len(conversations)} conversations but {len(images)} image lists")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: 'left' or 'right', got {padding_side!r}")
        rows, row_labels = [], []
        for conv, imgs in zip(conversations, images):
            ids, labels = self.encode_conversation(conv, add_generation_prompt)
            n_ph = sum(1 for i in ids if i == self.image_token_id)
            if n_ph != len(imgs):
                raise ValueError(f"conversation has {n_ph} <image> placeholders but {len(imgs)} images were given")
            rows.append(ids)
            row_labels.append(labels)
        L = max(len(r) for r in rows)
        B = len(rows)
        input_ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((B, L), dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, lab) in enumerate(zip(rows, row_labels)):
            sl = slice(0, len(ids)) if padding_side == "right" else slice(L - len(ids), L)
            input_ids[b, sl] = torch.tensor(ids)
            labels[b, sl] = torch.tensor(lab)
            attention_mask[b, sl] = 1
        n_img = max((len(i) for i in images), default=0)
        s = self.image_size
        pixel_values = torch.zeros((B, n_img, 3, s, s))
        for b, imgs in enumerate(images):
            for k, img in enumerate(imgs):
                pixel_values[b, k] = preprocess_image(img, s)
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if n_img:
            out["pixel_values"] = pixel_values
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if self.end_token_id in ids:
            ids = ids[: ids.index(self.end_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).strip()

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> List[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    # ------------------------------------------------------------------ io
    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str, image_size: Optional[int] = None) -> "AKIProcessor":
        from transformers import PreTrainedTokenizerFast

        from .config import AKIConfig

        tok = PreTrainedTokenizerFast.from_pretrained(directory)
        if image_size is None:
            image_size = AKIConfig.from_pretrained(directory).image_size
        return cls(tok, image_size)
