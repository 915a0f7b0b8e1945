"""Tiny random configs of the Hugging Face VLM classes `apply_mma` supports, with real image inputs.

Used by `examples/check_vlm_classes.py` and the tests. Every model has 3 decoder layers, fp32 weights,
a vocabulary of 128 and image placeholder token 120 (video 121 where the class has one); `pixel_inputs`
returns the class's own image inputs (pixel values, grid sizes, ...) for `n` images and the number
of placeholder tokens each image takes in the text.
"""
from __future__ import annotations

import torch

VOCAB, IMG, VID = 128, 120, 121
LAYERS = 3
SLIDING_WINDOW = 6  # Gemma 3's sliding layers: shorter than the test sequences


def _text(**over):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, attention_dropout=0.0, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    base.update(over)
    return base


def _clip(**over):
    base = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                patch_size=8, projection_dim=32)
    base.update(over)
    return base


def _qwen_vision(**over):
    base = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
                temporal_patch_size=2, in_channels=3)
    base.update(over)
    return base


def make_config(name: str):
    """(config, family name) for one of `CLASSES`."""
    import transformers as T

    if name == "llava":
        return T.LlavaConfig(text_config=T.LlamaConfig(**_text()), vision_config=T.CLIPVisionConfig(**_clip()),
                             image_token_index=IMG, vision_feature_layer=-1, tie_word_embeddings=False)
    if name == "llava_next":
        return T.LlavaNextConfig(text_config=T.LlamaConfig(**_text()), vision_config=T.CLIPVisionConfig(**_clip()),
                                 image_token_index=IMG, vision_feature_layer=-1, image_grid_pinpoints=[[16, 16]],
                                 tie_word_embeddings=False)
    if name == "llava_onevision":
        return T.LlavaOnevisionConfig(text_config=T.Qwen2Config(**_text()), vision_config=T.SiglipVisionConfig(
            **{k: v for k, v in _clip().items() if k != "projection_dim"}), image_token_index=IMG,
            video_token_index=VID, vision_feature_layer=-1, image_grid_pinpoints=[[16, 16]], tie_word_embeddings=False)
    if name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        cls = {"qwen2_vl": (T.Qwen2VLConfig, "mrope_section"), "qwen2_5_vl": (T.Qwen2_5_VLConfig, "mrope_section"),
               "qwen3_vl": (T.Qwen3VLConfig, "mrope_section")}[name][0]
        text = _text(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "mrope_section": [2, 3, 3]})
        vision = _qwen_vision()
        if name == "qwen2_5_vl":
            vision.update(intermediate_size=48, out_hidden_size=64, window_size=8, fullatt_block_indexes=[1])
            vision.pop("embed_dim")
            vision["hidden_size"] = 32
        if name == "qwen3_vl":
            text["rope_parameters"]["mrope_interleaved"] = True
            vision = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=4,
                          spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                          deepstack_visual_indexes=[0])
        return cls(text_config=text, vision_config=vision, image_token_id=IMG, video_token_id=VID,
                   vision_start_token_id=118, vision_end_token_id=119, tie_word_embeddings=False)
    if name in ("idefics3", "smolvlm"):
        cls, vcls = ((T.Idefics3Config, T.Idefics3VisionConfig) if name == "idefics3"
                     else (T.SmolVLMConfig, T.SmolVLMVisionConfig))
        return cls(text_config=T.LlamaConfig(**_text()), vision_config=vcls(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=16,
            patch_size=4), image_token_id=IMG, scale_factor=2, tie_word_embeddings=False)
    if name == "paligemma":
        return T.PaliGemmaConfig(text_config=T.GemmaConfig(**_text(head_dim=16)), vision_config=T.SiglipVisionConfig(
            **{k: v for k, v in _clip().items() if k != "projection_dim"}), image_token_index=IMG,
            projection_dim=64, tie_word_embeddings=False)
    if name == "gemma3":
        text = _text(head_dim=16, sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "sliding_attention",
                                                                               "full_attention"],
                     attn_logit_softcapping=None, final_logit_softcapping=None, query_pre_attn_scalar=16)
        return T.Gemma3Config(text_config=T.Gemma3TextConfig(**text), vision_config=T.SiglipVisionConfig(
            **{k: v for k, v in _clip().items() if k != "projection_dim"}), image_token_index=IMG,
            boi_token_index=116, eoi_token_index=117, mm_tokens_per_image=4, tie_word_embeddings=False)
    if name == "internvl":
        return T.InternVLConfig(text_config=T.Qwen2Config(**_text()), vision_config=T.InternVLVisionConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=[16, 16],
            patch_size=[4, 4]), image_token_id=IMG, downsample_ratio=0.5, vision_feature_layer=-1,
            tie_word_embeddings=False)
    if name == "mistral3":
        return T.Mistral3Config(text_config=T.MistralConfig(**_text(head_dim=16, sliding_window=None)),
                                vision_config=T.PixtralVisionConfig(hidden_size=32, intermediate_size=48,
                                                                    num_hidden_layers=2, num_attention_heads=2,
                                                                    image_size=16, patch_size=4, head_dim=16),
                                image_token_index=IMG, spatial_merge_size=2, vision_feature_layer=-1,
                                tie_word_embeddings=False)
    raise KeyError(name)


CLASSES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm",
           "paligemma", "gemma3", "internvl", "mistral3")


def make_model(name: str, attn_implementation: str = "eager", seed: int = 0):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(make_config(name), attn_implementation=attn_implementation)
    return model.float().eval()


def pixel_inputs(name: str, n: int, seed: int = 0):
    """(image kwargs for the model's forward, placeholder tokens per image) for `n` images."""
    g = torch.Generator().manual_seed(seed)
    if name in ("llava", "paligemma", "gemma3"):
        per = {"llava": 4, "paligemma": 4, "gemma3": 4}[name]
        return {"pixel_values": torch.randn(n, 3, 16, 16, generator=g)}, per
    if name in ("llava_next", "llava_onevision"):
        # one 16x16 tile grid: base image + 1 high-res tile of 16x16 each
        pv = torch.randn(n, 2, 3, 16, 16, generator=g)
        sizes = torch.tensor([[16, 16]] * n)
        return {"pixel_values": pv, "image_sizes": sizes}, None
    if name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        # 8x8 image, patch 4, temporal 2: grid (1, 2, 2) patches -> 1 token after the 2x2 merge; use 16x16: 4 tokens
        grid = torch.tensor([[1, 4, 4]] * n)
        pv = torch.randn(n * 16, 3 * 2 * 4 * 4, generator=g)
        return {"pixel_values": pv, "image_grid_thw": grid}, 4
    if name in ("idefics3", "smolvlm"):
        return {"pixel_values": torch.randn(n, 1, 3, 16, 16, generator=g)}, 4
    if name == "internvl":
        return {"pixel_values": torch.randn(n, 3, 16, 16, generator=g)}, 4
    if name == "mistral3":
        return {"pixel_values": torch.randn(n, 3, 16, 16, generator=g), "image_sizes": torch.tensor([[16, 16]] * n)}, 4
    raise KeyError(name)
