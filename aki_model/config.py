"""`AKIConfig`: everything needed to build an `AKIModel` (vision encoder, resampler, LLM, token ids)."""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Union

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
            resampler shape (AKI-4B: 6, 8, 64, 4, the reference's defaults).
        image_token_id: id of the ``<image>`` placeholder in ``input_ids``; each one is replaced
            by ``num_image_tokens`` visual tokens.
        assistant_token_id: id of ``<|assistant|>``: image tokens attend to the text that follows
            them up to and including the next ``<|assistant|>`` (never to what follows it).
        eos_token_id: id that closes every answer (``<|endoftext|>``); generation stops there.
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
    resampler_heads: int = 8
    resampler_dim_head: int = 64
    resampler_ff_mult: int = 4
    image_token_id: int = 32012
    assistant_token_id: int = 32001
    eos_token_id: int = 32000
    pad_token_id: int = 32011
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
                pad_token_id=SPECIAL_IDS["<pad>"], bos_token_id=SPECIAL_IDS["<s>"],
                eos_token_id=SPECIAL_IDS["<|endoftext|>"],
                tie_word_embeddings=False,
            ),
            num_image_tokens=8, resampler_depth=1, resampler_heads=2, resampler_dim_head=16, resampler_ff_mult=2,
            image_token_id=SPECIAL_IDS["<image>"], assistant_token_id=SPECIAL_IDS["<|assistant|>"],
            eos_token_id=SPECIAL_IDS["<|endoftext|>"], pad_token_id=SPECIAL_IDS["<pad>"],
        )
        cfg.update(overrides)
        return cls(**cfg)

    @classmethod
    def aki_4b(cls, phi_config: Union[str, Dict[str, Any], None] = None, **overrides) -> "AKIConfig":
        """The released AKI-4B (Sony/AKI-4B-phi-3.5-mini), as the reference code builds it:

        - SigLIP so400m-patch14-384, last hidden state (its pooling head is unused);
        - Perceiver resampler: 144 latents, depth 6, 8 heads of 64, ff x4 (``src/aki.py`` passes only
          dim, dim_inner and num_latents; the rest are ``src/helpers.py`` defaults);
        - Phi-3.5-mini-instruct: 32 layers, hidden 3072, 32 heads of 96, 8192 MLP, 131072 positions over
          an original 4096, longrope rotary scaling; vocabulary 32014 after merging AKI's decoupled
          embeddings: Phi-3.5's 32011 tokens, ``<pad>`` 32011, ``<image>`` 32012, ``<|endofchunk|>``
          32013 (see `aki_model.weights`); BOS ``<s>`` 1, EOS ``<|endoftext|>`` 32000.

        Args:
            phi_config: Phi-3.5-mini-instruct's ``config.json`` (a path, the directory holding it, or
                the dict): its ``rope_scaling`` (or ``rope_parameters``: the longrope ``short_factor``
                and ``long_factor`` lists, 48 numbers each), ``rope_theta`` and ``sliding_window`` are
                taken from it. Without it, ``text_config`` must carry ``rope_scaling`` (or
                ``rope_parameters``) itself: the factor lists are not repeated in this package, and
                a Phi-3.5 without them computes different logits, so the preset refuses to guess.
            overrides: replace fields; ``vision_config``/``text_config`` dicts are merged into the preset's.
        """
        cfg = dict(
            vision_config=dict(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=384, patch_size=14, vision_use_head=False,
            ),
            text_config=dict(
                model_type="phi3", vocab_size=32014, hidden_size=3072, intermediate_size=8192,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=131072, original_max_position_embeddings=4096,
                rms_norm_eps=1e-5, pad_token_id=32011, bos_token_id=1, eos_token_id=32000,
                tie_word_embeddings=False,
            ),
            num_image_tokens=144, resampler_depth=6, resampler_heads=8, resampler_dim_head=64, resampler_ff_mult=4,
            image_token_id=32012, assistant_token_id=32001, eos_token_id=32000, pad_token_id=32011,
        )
        if phi_config is not None:
            cfg["text_config"].update(_phi_rope_fields(phi_config))
        for key in ("vision_config", "text_config"):
            if key in overrides:
                cfg[key] = {**cfg[key], **overrides.pop(key)}
        cfg.update(overrides)
        rope = cfg["text_config"].get("rope_scaling") or cfg["text_config"].get("rope_parameters") or {}
        if (rope.get("rope_type") or rope.get("type")) not in ("longrope", "su"):
            raise ValueError(
                "AKIConfig.aki_4b: Phi-3.5-mini-instruct uses longrope rotary scaling; pass "
                "phi_config='<path to its config.json>' or text_config={'rope_scaling': {'type': 'longrope', "
                "'short_factor': [48 numbers], 'long_factor': [48 numbers]}} (got rope settings "
                f"{rope or None!r})")
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


PHI_ROPE_KEYS = ("rope_scaling", "rope_parameters", "rope_theta", "sliding_window", "original_max_position_embeddings",
                 "max_position_embeddings")


def _phi_rope_fields(phi_config: Union[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The rotary fields of a Phi-3.5 ``config.json`` (path, directory or dict)."""
    if isinstance(phi_config, str):
        path = os.path.join(phi_config, "config.json") if os.path.isdir(phi_config) else phi_config
        with open(path, encoding="utf-8") as f:
            phi_config = json.load(f)
    if not isinstance(phi_config, dict):
        raise TypeError(f"phi_config: a path or a dict, got {type(phi_config).__name__}")
    out = {k: copy.deepcopy(phi_config[k]) for k in PHI_ROPE_KEYS if phi_config.get(k) is not None}
    if "rope_scaling" in out and "rope_parameters" in out:
        out.pop("rope_parameters")
    return out
