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

``n0`` is the reference's ``initial_tokenizer_len``: the tokenizer length after the factory added
``<pad>`` and before it added ``<image>`` and ``<|endofchunk|>`` (Phi-3.5: 32011 tokens + ``<pad>`` =
32012). The released "decoupled" embedding looks up ids ``<= n0 - 1`` in ``weight`` (32064 rows:
``<pad>`` = 32011 reads row 32011, the rows above are never used) and larger ids in
``additional_embedding`` (``<image>`` = 32012, ``<|endofchunk|>`` = 32013); its output layer keeps
the first ``n0`` logits of ``weight`` (and of its bias: the reference's ``DecoupledLinear`` is built
with a bias) and appends the ``additional_fc`` logits. Merging keeps every id and logit where it
was: the LLM vocabulary becomes ``n0 + k`` = 32014, ``text_config["vocab_size"]`` of
`AKIConfig.aki_4b`; ``n0`` is derived from it.

Resampler (``vision_tokenizer``): the reference's defaults, 8 heads of 64: ``to_q`` [512, 1152],
``to_kv`` [1024, 1152], ``to_out`` [1152, 512]; ``latents`` [144, 1152]; ``projection`` [3072, 1152].
"""
from __future__ import annotations

import contextlib
import glob
import os
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

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


@contextlib.contextmanager
def empty_parameters():
    """Inside: every parameter a module registers is created on the meta device (no memory, no
    random init); buffers stay real. Load the weights afterwards with ``assign=True``."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def load_aki_checkpoint(checkpoint: Union[str, Dict[str, torch.Tensor]], config: AKIConfig,
                        dtype: Optional[torch.dtype] = None, device=None):
    """Build an `AKIModel` from a checkpoint with the released AKI layout, strictly (every tensor
    name and shape must match; the model is built without initialising its parameters and takes
    the checkpoint's tensors, so memory holds one copy of the weights).

    Args:
        checkpoint: a file, a directory of shards, or a state dict already in memory.
        config: the model's shapes, e.g. ``AKIConfig.aki_4b(phi_config=...)``. ``lm_head_bias`` is
            set from the checkpoint.
    """
    from .model import AKIModel

    sd = read_state_dict(checkpoint) if isinstance(checkpoint, str) else dict(checkpoint)
    converted, info = convert_aki_state_dict(sd, int(config.text_config["vocab_size"]),
                                             keep_vision_head=bool(config.vision_config.get("vision_use_head", False)))
    if info["lm_head_bias"] != config.lm_head_bias:
        config = AKIConfig.from_dict({**config.to_dict(), "lm_head_bias": info["lm_head_bias"]})
    with empty_parameters():
        model = AKIModel(config)
    model.load_canonical_state_dict(converted, strict=True, assign=True)
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise KeyError(f"checkpoint left parameters unset: {left[:8]}")
    if config.freeze_vision_encoder:
        model.vision_encoder.requires_grad_(False)
    if dtype is not None:
        model.to(dtype)
    if device is not None:
        model.to(device)
    return model.eval()
