"""Loading checkpoints laid out like the released AKI-4B (Sony/AKI-4B-phi-3.5-mini).

The released model (an OpenFlamingo/xGen-MM style ``VLMWithLanguageStream``) stores:

=============================================  ===============================================
released name                                  here
=============================================  ===============================================
``vision_encoder.<name>``                      ``vision_encoder.<name>`` (SigLIP vision tower;
                                               with transformers < 5.20 the module nests it
                                               under ``vision_encoder.vision_model.``)
``vision_encoder.head.*``                      dropped (AKI uses the last hidden state, not the
                                               pooled output; our configs set
                                               ``vision_use_head=False``)
``vision_tokenizer.<name>``                    ``vision_tokenizer.<name>`` (same Perceiver layout)
``lang_model.model.embed_tokens.weight``       rows ``[0, n0)`` of ``lang_model.model.embed_tokens.weight``
``lang_model.model.embed_tokens.``             rows ``[n0, n0 + k)`` (the ``k`` tokens added by AKI:
``additional_embedding.weight``                ``<image>``, ``<|endofchunk|>``)
``lang_model.lm_head.weight``                  rows ``[0, n0)`` of ``lang_model.lm_head.weight``
``lang_model.lm_head.additional_fc.weight``    rows ``[n0, n0 + k)``
``lang_model.lm_head.bias`` and                ``lang_model.lm_head.bias`` (same row split; the
``lang_model.lm_head.additional_fc.bias``      config gets ``lm_head_bias=True``)
``lang_model.<other>``                         ``lang_model.<other>`` (the HF causal LM's own names)
=============================================  ===============================================

``n0`` is the tokenizer length before AKI added its tokens (32011 for Phi-3.5): the released
"decoupled" embedding looks up ids ``<= n0 - 1`` in ``weight`` (whose extra rows, up to 32064, are
never used) and larger ids in ``additional_embedding``; its output layer keeps the first ``n0``
logits of ``weight`` and appends the ``additional_fc`` logits. Merging them keeps every id and
logit where it was: the LLM vocabulary becomes ``n0 + k`` (32013), which is
``text_config["vocab_size"]`` of `AKIConfig.aki_4b`; ``n0`` is derived from it.
"""
from __future__ import annotations

import glob
import os
from typing import Dict, Optional, Tuple, Union

import torch

from .config import AKIConfig

EMB = "lang_model.model.embed_tokens"
HEAD = "lang_model.lm_head"


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of a checkpoint: a ``.safetensors``/``.bin``/``.pt`` file, or a directory of
    ``*.safetensors`` shards (or ``*.bin`` shards when it has none)."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.safetensors"))) or sorted(glob.glob(os.path.join(path, "*.bin")))
        if not files:
            raise FileNotFoundError(f"no *.safetensors or *.bin files in {path}")
    else:
        files = [path]
    sd: Dict[str, torch.Tensor] = {}
    for f in files:
        if f.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd.update(load_file(f))
        else:
            obj = torch.load(f, map_location="cpu", weights_only=True)
            sd.update(obj.get("state_dict", obj) if isinstance(obj, dict) and "state_dict" in obj else obj)
    return sd


def convert_aki_state_dict(state_dict: Dict[str, torch.Tensor], vocab_size: int,
                           keep_vision_head: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Released AKI names -> `AKIModel.canonical_state_dict` names (see module docstring).

    Args:
        state_dict: the released tensors (a ``module.`` prefix from DDP/FSDP is stripped).
        vocab_size: the merged LLM vocabulary (original tokenizer length + added tokens).
        keep_vision_head: keep ``vision_encoder.head.*`` (only for configs with a SigLIP head).
    Returns (converted state dict, info) with info ``{"lm_head_bias": bool, "original_vocab": n0,
    "added_tokens": k, "dropped": [...]}``.
    """
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    out: Dict[str, torch.Tensor] = {}
    dropped = []
    add_emb = sd.pop(f"{EMB}.additional_embedding.weight", None)
    add_w = sd.pop(f"{HEAD}.additional_fc.weight", None)
    add_b = sd.pop(f"{HEAD}.additional_fc.bias", None)
    k = 0 if add_emb is None else add_emb.shape[0]
    if add_w is not None and add_w.shape[0] != k:
        raise ValueError(f"{HEAD}.additional_fc has {add_w.shape[0]} rows but the additional embedding {k}")
    n0 = vocab_size - k
    if n0 <= 0:
        raise ValueError(f"vocab_size {vocab_size} is not larger than the {k} added tokens")

    def merge(base: torch.Tensor, extra: Optional[torch.Tensor], name: str) -> torch.Tensor:
        if base.shape[0] < n0:
            raise ValueError(f"{name}: {base.shape[0]} rows, fewer than the original vocabulary {n0} "
                             f"(vocab_size {vocab_size} - {k} added tokens)")
        parts = [base[:n0]] + ([extra.to(base.dtype)] if extra is not None and k else [])
        return torch.cat(parts, dim=0).contiguous()

    for name, t in sd.items():
        if name == f"{EMB}.weight":
            out[name] = merge(t, add_emb, name)
        elif name == f"{HEAD}.weight":
            out[name] = merge(t, add_w, name)
        elif name == f"{HEAD}.bias":
            out[name] = merge(t, add_b, name)
        elif name.startswith("vision_encoder.head.") and not keep_vision_head:
            dropped.append(name)
        elif name.startswith("vision_encoder.vision_model."):
            out["vision_encoder." + name[len("vision_encoder.vision_model."):]] = t
        elif name.startswith(("vision_encoder.", "vision_tokenizer.", "lang_model.")):
            out[name] = t
        else:
            dropped.append(name)
    if f"{HEAD}.bias" not in out and add_b is not None and f"{HEAD}.weight" in out:
        # only the added rows carry a bias: give the original rows a zero one
        out[f"{HEAD}.bias"] = torch.cat([torch.zeros(n0, dtype=add_b.dtype), add_b])
    info = {"lm_head_bias": f"{HEAD}.bias" in out, "original_vocab": n0, "added_tokens": k, "dropped": dropped}
    return out, info


def load_aki_checkpoint(checkpoint: Union[str, Dict[str, torch.Tensor]], config: Optional[AKIConfig] = None,
                        dtype: Optional[torch.dtype] = None, device=None):
    """Build an `AKIModel` from a checkpoint with the released AKI layout.

    Args:
        checkpoint: a file, a directory of shards, or a state dict already in memory.
        config: the model's shapes; default `AKIConfig.aki_4b()`. ``lm_head_bias`` is set from
            the checkpoint.
    """
    from .model import AKIModel

    config = config or AKIConfig.aki_4b()
    sd = read_state_dict(checkpoint) if isinstance(checkpoint, str) else dict(checkpoint)
    converted, info = convert_aki_state_dict(sd, int(config.text_config["vocab_size"]),
                                             keep_vision_head=bool(config.vision_config.get("vision_use_head", False)))
    if info["lm_head_bias"] != config.lm_head_bias:
        config = AKIConfig.from_dict({**config.to_dict(), "lm_head_bias": info["lm_head_bias"]})
    model = AKIModel(config)
    model.load_canonical_state_dict(converted, strict=True)
    if dtype is not None:
        model.to(dtype)
    if device is not None:
        model.to(device)
    return model.eval()
