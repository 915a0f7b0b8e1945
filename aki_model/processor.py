"""`AKIProcessor`: (images, conversation) -> model inputs, token for token as the AKI reference.

The released AKI-4B was trained on (reference: ``train/sft_data_utils/templates``, tokenised by a
tokenizer with ``add_bos_token`` and ``add_eos_token`` set, ``src/factory.py``)::

    <s><|system|>\\n{system}<|end|>\\n<|user|>\\n<image>\\n{question}<|end|>\\n<|assistant|>\\n{answer}<|endoftext|>

The whole text is tokenised in one call (as the reference does), then the tokenizer's BOS id is put
in front and, after a final answer, its EOS id (``<|endoftext|>`` for Phi-3.5) at the end. Labels
are every token after an ``<|assistant|>`` up to the next ``<|user|>`` (so the newline after
``<|assistant|>``, the answer, and the closing EOS), -100 elsewhere: for one turn, exactly the
reference's "everything after the first ``<|assistant|>``".

Several turns (our extension; every reference sample has one): an answer that is followed by
another turn ends with ``\\n`` before that turn's ``<|user|>`` (the reference's turn separator).

Captions (the reference's pretraining format): ``<s><image>{caption}<|endofchunk|><|endoftext|>``,
see `AKIProcessor.captions`.

Each ``<image>`` is one placeholder token in ``input_ids``; the model replaces it by
``num_image_tokens`` visual tokens.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .tokenizer import build_tokenizer

IGNORE_INDEX = -100
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
ROLES = ("system", "user", "assistant")
# The system message of the AKI reference (training templates, demo and evaluation prompts).
AKI_SYSTEM_MESSAGE = ("A chat between a curious user and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
AKI_ADDED_TOKENS = ("<image>", "<|endofchunk|>")


def prepare_tokenizer(tokenizer):
    """Add AKI's tokens to a Hugging Face tokenizer the way the reference's factory does, and return it.

    If the tokenizer has no ``<image>`` yet: a ``<pad>`` token first when it has no pad token or its pad
    equals its EOS (Phi-3.5: both ``<|endoftext|>``), then ``<image>`` and ``<|endofchunk|>``. On
    Phi-3.5-mini-instruct's tokenizer (length 32011) this gives ``<pad>`` = 32011, ``<image>`` = 32012,
    ``<|endofchunk|>`` = 32013 and length 32014, the ids of the released AKI-4B. A tokenizer that
    already has ``<image>`` (e.g. the AKI-4B one) is returned unchanged."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in CHAT_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"tokenizer: lacks the chat tokens {missing} of the AKI template (Phi-3.5 has them)")
    if "<image>" in vocab:
        return tokenizer
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in AKI_ADDED_TOKENS],
                         special_tokens=True)
    return tokenizer


def preprocess_image(image: Union[Image.Image, np.ndarray, str], size: int,
                     mean=SIGLIP_MEAN, std=SIGLIP_STD) -> torch.Tensor:
    """SigLIP preprocessing as in the reference: RGB, bicubic resize to size x size, scale to [0, 1],
    normalise. Returns float32 [3, size, size]."""
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
        tokenizer: any Hugging Face tokenizer with the chat tokens (``<|system|>``, ``<|user|>``,
            ``<|assistant|>``, ``<|end|>``); AKI's tokens are added by `prepare_tokenizer`. Default:
            the in-code `aki_model.tokenizer.build_tokenizer()`.
        image_size: side of the square images given to the vision encoder (AKI-4B: 384).
        default_system: system message used when a conversation has none (default: the reference's
            `AKI_SYSTEM_MESSAGE`); ``None``: no system turn then.
    """

    def __init__(self, tokenizer=None, image_size: int = 32, default_system: Optional[str] = AKI_SYSTEM_MESSAGE):
        self.tokenizer = prepare_tokenizer(tokenizer if tokenizer is not None else build_tokenizer())
        self.image_size = image_size
        self.default_system = default_system
        t = self.tokenizer
        ids = {tok: t.convert_tokens_to_ids(tok) for tok in CHAT_TOKENS + AKI_ADDED_TOKENS}
        self.image_token_id = ids["<image>"]
        self.endofchunk_token_id = ids["<|endofchunk|>"]
        self.assistant_token_id = ids["<|assistant|>"]
        self.user_token_id = ids["<|user|>"]
        self.system_token_id = ids["<|system|>"]
        self.end_token_id = ids["<|end|>"]
        self.bos_token_id = t.bos_token_id
        self.eos_token_id = t.eos_token_id
        if self.eos_token_id is None:
            raise ValueError("tokenizer: needs an EOS token (AKI closes every answer with it)")
        self.pad_token_id = t.pad_token_id

    # ------------------------------------------------------------------ text
    def prompt_text(self, conversation: Sequence[Dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as the reference's template text, without BOS/EOS (added as ids)."""
        conv = list(conversation)
        for turn in conv:
            if turn.get("role") not in ROLES:
                raise ValueError(f"conversation role: expected one of {ROLES}, got {turn.get('role')!r}")
            if turn["role"] != "user" and "<image>" in turn["content"]:
                raise ValueError("<image> may only appear in user turns (images attend to their turn's question)")
        if self.default_system is not None and not any(t["role"] == "system" for t in conv):
            conv = [{"role": "system", "content": self.default_system}] + conv
        if add_generation_prompt and conv and conv[-1]["role"] == "assistant":
            raise ValueError("add_generation_prompt: the conversation already ends with an assistant turn")
        parts = []
        for k, turn in enumerate(conv):
            role, content = turn["role"], turn["content"]
            if role == "assistant":
                parts.append(f"<|assistant|>\n{content}" + ("\n" if k + 1 < len(conv) else ""))
            else:
                parts.append(f"<|{role}|>\n{content}<|end|>\n")
        if add_generation_prompt:
            parts.append("<|assistant|>\n")
        return "".join(parts)

    def _tokens(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def encode_conversation(self, conversation: Sequence[Dict[str, str]],
                            add_generation_prompt: bool = False) -> Tuple[List[int], List[int]]:
        """Token ids and labels (lists) of one conversation: a list of ``{"role", "content"}`` with
        roles system/user/assistant; ``<image>`` in a user turn's content marks an image."""
        ids = self._tokens(self.prompt_text(conversation, add_generation_prompt))
        closes_answer = bool(conversation) and conversation[-1]["role"] == "assistant" and not add_generation_prompt
        if closes_answer:
            ids.append(self.eos_token_id)
        if self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        labels, inside = [], False
        for i in ids:
            if i in (self.user_token_id, self.system_token_id):
                inside = False
            labels.append(i if inside else IGNORE_INDEX)
            if i == self.assistant_token_id:
                inside = True
        return ids, labels

    def encode_caption(self, caption: str, num_images: int = 1) -> Tuple[List[int], List[int]]:
        """The reference's pretraining format ``<s><image>{caption}<|endofchunk|><|endoftext|>``
        (``num_images`` placeholders); labels: every token but BOS and the placeholders."""
        ids = self._tokens("<image>" * num_images + caption.strip() + "<|endofchunk|>") + [self.eos_token_id]
        if self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        labels = [IGNORE_INDEX if (i == self.image_token_id or (k == 0 and i == self.bos_token_id)) else i
                  for k, i in enumerate(ids)]
        return ids, labels

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
        encoded = [self.encode_conversation(c, add_generation_prompt) for c in conversations]
        return self._batch(encoded, images, padding_side)

    def captions(self, captions: Sequence[str], images: Sequence, padding_side: str = "right") -> Dict[str, torch.Tensor]:
        """Batch of captions in the reference's pretraining format, one image each (``images[k]``),
        or a list of images per caption."""
        images = [list(i) if isinstance(i, (list, tuple)) else [i] for i in images]
        if len(images) != len(captions):
            raise ValueError(f"got {len(captions)} captions but {len(images)} images")
        return self._batch([self.encode_caption(c, len(i)) for c, i in zip(captions, images)], images, padding_side)

    def _batch(self, encoded, images, padding_side: str) -> Dict[str, torch.Tensor]:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: 'left' or 'right', got {padding_side!r}")
        if images is None:
            images = [[] for _ in encoded]
        if len(images) != len(encoded):
            raise ValueError(f"got {len(encoded)} conversations but {len(images)} image lists")
        for (ids, _), imgs in zip(encoded, images):
            n_ph = sum(1 for i in ids if i == self.image_token_id)
            if n_ph != len(imgs):
                raise ValueError(f"conversation has {n_ph} <image> placeholders but {len(imgs)} images were given")
        if self.pad_token_id is None:
            raise ValueError("tokenizer: has no pad token (prepare_tokenizer adds <pad>)")
        L = max(len(ids) for ids, _ in encoded)
        B = len(encoded)
        input_ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((B, L), dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, lab) in enumerate(encoded):
            sl = slice(0, len(ids)) if padding_side == "right" else slice(L - len(ids), L)
            input_ids[b, sl] = torch.tensor(ids)
            labels[b, sl] = torch.tensor(lab)
            attention_mask[b, sl] = 1
        n_img = max((len(i) for i in images), default=0)
        s = self.image_size
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if n_img:
            pixel_values = torch.zeros((B, n_img, 3, s, s))
            for b, imgs in enumerate(images):
                for k, img in enumerate(imgs):
                    pixel_values[b, k] = preprocess_image(img, s)
            out["pixel_values"] = pixel_values
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of generated ids, up to the first EOS."""
        ids = [int(i) for i in ids]
        if self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).strip()

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> List[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    # ------------------------------------------------------------------ io
    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str, image_size: Optional[int] = None, **kwargs) -> "AKIProcessor":
        """The tokenizer saved in ``directory`` (a checkpoint of ours, or a local copy of
        Phi-3.5-mini-instruct / AKI-4B: any tokenizer `transformers.AutoTokenizer` reads there).
        ``image_size``: default from ``aki_config.json`` if the directory has one, else 384 (AKI-4B)."""
        from transformers import AutoTokenizer

        from .config import CONFIG_NAME, AKIConfig

        tok = AutoTokenizer.from_pretrained(directory)
        if image_size is None:
            has_cfg = os.path.exists(os.path.join(directory, CONFIG_NAME))
            image_size = AKIConfig.from_pretrained(directory).image_size if has_cfg else 384
        return cls(tok, image_size, **kwargs)
