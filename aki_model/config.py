"""`AKIConfig`: everything needed to build an `AKIModel` (vision encoder, resampler, LLM, token ids)."""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

ATTENTION_CHOICES = ("mma", "causal")
CONFIG_NAME = "aki_config.json"


@dataclass
class AKIConfig:
    """Configuration of the AKI model.

    Args:
        vision_config: kwargs of `transformers.SiglipVisionConfig` (the vision encoder).
        text_config: kwargs of the LLM's config, with ``model_type`` (e.g. ``"phi3"``); any
            Hugging Face causal LM that `transformers.AutoModelForCausalLM` can build works.
        num_image_tokens: visual tokens per image, i.e. Perceiver latents (AKI: 144).
        resampler_depth, resampler_heads, resampler_dim_head, resampler_ff_mult: Perceiver
            resampler shape (AKI-4B: 6, 16, 96, 4).
        image_token_id: id of the ``<image>`` placeholder in ``input_ids``; each one is replaced
            by ``num_image_tokens`` visual tokens.
        assistant_token_id: id of ``<|assistant|>``: image tokens attend to the text that follows
            them up to (not including) the next ``<|assistant|>``.
        end_token_id: id of ``<|end|>`` (end of a turn; the default stop token of generation).
        pad_token_id: id used to pad ``input_ids``.
        attention: ``"mma"`` (modality-mutual attention, AKI) or ``"causal"`` (the ablation).
        freeze_vision_encoder: no gradients through the vision encoder (AKI's fine-tuning setup).
        lm_head_bias: the LLM's output layer has a bias (set when loading a checkpoint whose
            ``lm_head`` carries one).
    """

    vision_config: Dict[str, Any] = field(default_factory=dict)
    text_config: Dict[str, Any] = field(default_factory=dict)
    num_image_tokens: int = 144
    resampler_depth: int = 6
    resampler_heads: int = 16
    resampler_dim_head: int = 96
    resampler_ff_mult: int = 4
    image_token_id: int = 32011
    assistant_token_id: int = 32001
    end_token_id: int = 32007
    pad_token_id: int = 32000
    attention: str = "mma"
    freeze_vision_encoder: bool = True
    lm_head_bias: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention: expected one of {ATTENTION_CHOICES}, got {self.attention!r}")
        if "model_type" not in self.text_config:
            raise ValueError("text_config: needs a 'model_type' (e.g. 'phi3')")
        if self.num_image_tokens < 1:
            raise ValueError(f"num_image_tokens: must be >= 1, got {self.num_image_tokens}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, vocab_size: int = 128, **overrides) -> "AKIConfig":
        """A model of about 0.2M parameters for CPU tests: 32 px images, 8 visual tokens, Phi-3 LLM
        with 2 layers, hidden 64, 4 query heads over 2 key/value heads. Token ids default to those of
        `aki_model.tokenizer.build_tokenizer()`."""
        from .tokenizer import SPECIAL_IDS

        cfg = dict(
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=32, patch_size=8, vision_use_head=False,
            ),
            text_config=dict(
                model_type="phi3", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=1024, original_max_position_embeddings=1024,
                pad_token_id=SPECIAL_IDS["<pad>"], bos_token_id=None, eos_token_id=SPECIAL_IDS["<|end|>"],
                tie_word_embeddings=False,
            ),
            num_image_tokens=8, resampler_depth=1, resampler_heads=2, resampler_dim_head=16, resampler_ff_mult=2,
            image_token_id=SPECIAL_IDS["<image>"], assistant_token_id=SPECIAL_IDS["<|assistant|>"],
            end_token_id=SPECIAL_IDS["<|end|>"], pad_token_id=SPECIAL_IDS["<pad>"],
        )
        cfg.update(overrides)
        return cls(**cfg)

    @classmethod
    def aki_4b(cls, **overrides) -> "AKIConfig":
        """The shapes of the released AKI-4B (Sony/AKI-4B-phi-3.5-mini): SigLIP so400m-patch14-384
        (no pooling head: AKI uses the last hidden state), a Perceiver resampler with 144 latents,
        and Phi-3.5-mini-instruct (32 layers, hidden 3072, 32 heads of dim 96) with the two added
        tokens ``<image>`` (32011) and ``<|endofchunk|>`` (32012): vocabulary 32013 after merging
        the decoupled embeddings (see `aki_model.weights`).

        Phi-3.5-mini uses "longrope" rotary scaling; its factor lists are not repeated here: pass
        the ``rope_parameters``/``rope_scaling`` of the released ``config.json`` through
        ``text_config`` to reproduce its logits exactly."""
        cfg = dict(
            vision_config=dict(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=384, patch_size=14, vision_use_head=False,
            ),
            text_config=dict(
                model_type="phi3", vocab_size=32013, hidden_size=3072, intermediate_size=8192,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=131072, original_max_position_embeddings=4096,
                rms_norm_eps=1e-5, pad_token_id=32000, bos_token_id=1, eos_token_id=32007,
                tie_word_embeddings=False,
            ),
            num_image_tokens=144, resampler_depth=6, resampler_heads=16, resampler_dim_head=96, resampler_ff_mult=4,
            image_token_id=32011, assistant_token_id=32001, end_token_id=32007, pad_token_id=32000,
        )
        for key in ("vision_config", "text_config"):
            if key in overrides:
                cfg[key] = {**cfg[key], **overrides.pop(key)}
        cfg.update(overrides)
        return cls(**cfg)

    # ------------------------------------------------------------------ derived
    @property
    def policy(self) -> str:
        return "mma" if self.attention == "mma" else "causal"

    @property
    def image_size(self) -> int:
        return int(self.vision_config.get("image_size", 224))

    def build_vision_config(self):
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(**self.vision_config)

    def build_text_config(self):
        from transformers import AutoConfig

        kw = dict(self.text_config)
        return AutoConfig.for_model(kw.pop("model_type"), **kw)

    # ------------------------------------------------------------------ io
    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "AKIConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, directory: str) -> "AKIConfig":
        with open(os.path.join(directory, CONFIG_NAME), encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
