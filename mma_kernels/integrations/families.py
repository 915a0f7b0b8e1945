"""The model families `apply_mma` knows, as data: one row per transformers ``model_type``.

Everything that can be read from the config is read from it (the text sub-config via
``config.get_text_config()``, image/video token ids, sliding windows); the table only holds what a
config does not say: the chat template's turn-start marker, the model's own non-causal rule, and
whether positions are M-RoPE. A new family is a new row (and a test), not a new code path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Family:
    turn_marker: Optional[str] = None  # the chat template's turn-start token (segments start there)
    own_rule: Optional[str] = None  # None | "image_blocks" (Gemma 3) | "prefix" (PaliGemma): from token_type_ids
    mrope: bool = False  # 3D/4D position ids


_IM_START = "<|im_start|>"
FAMILIES = {
    # text-only decoders
    "llama": Family(), "mistral": Family(), "qwen2": Family(_IM_START), "qwen3": Family(_IM_START),
    "phi3": Family("<|user|>"),
    # VLMs
    "llava": Family(), "llava_next": Family(), "llava_onevision": Family(_IM_START),
    "qwen2_vl": Family(_IM_START, mrope=True), "qwen2_5_vl": Family(_IM_START, mrope=True),
    "qwen3_vl": Family(_IM_START, mrope=True),
    "idefics3": Family("<end_of_utterance>"), "smolvlm": Family("<end_of_utterance>"),
    "paligemma": Family(own_rule="prefix"), "gemma3": Family("<start_of_turn>", own_rule="image_blocks"),
    "internvl": Family(_IM_START), "mistral3": Family("[INST]"),
}

_IMAGE_ATTRS = ("image_token_id", "image_token_index")
_VIDEO_ATTRS = ("video_token_id", "video_token_index")


def family_of(config) -> Family:
    return FAMILIES.get(getattr(config, "model_type", None), Family())


def _first_int(config, attrs) -> Optional[int]:
    for a in attrs:
        v = getattr(config, a, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def default_media_tokens(config) -> Optional[Tuple[int, ...]]:
    """The config's image (and video) placeholder token ids, or None if it names none."""
    ids = tuple(v for v in (_first_int(config, _IMAGE_ATTRS), _first_int(config, _VIDEO_ATTRS)) if v is not None)
    return ids or None


def text_config_key(config) -> Tuple[object, Optional[str]]:
    """(text config, its key among ``config.sub_configs``; None when the model is the text decoder itself)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is config:
        return config, None
    for key in getattr(config, "sub_configs", {}) or {}:
        if getattr(config, key, None) is text:
            return text, key
    raise ValueError(f"apply_mma: cannot find the text sub-config of {type(config).__name__} "
                     f"({getattr(config, 'model_type', '?')}) among its sub_configs {list(config.sub_configs)}")


def sub_configs(config, prefix: str = ""):
    """(dotted name, config) of the config and every nested sub-config."""
    yield prefix or getattr(config, "model_type", "model"), config
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "to_dict"):
            yield from sub_configs(sub, f"{prefix}.{key}" if prefix else key)
