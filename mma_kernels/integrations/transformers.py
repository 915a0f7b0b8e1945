"""Hugging Face transformers glue: the ``"mma"`` attention implementation and `apply_mma`.

``register()`` adds ``"mma"`` to ``transformers.AttentionInterface`` (the attention function) and to
``transformers.masking_utils.AttentionMaskInterface`` (the mask builder). The mask builder never
builds a dense 4D mask: it returns a small `MMAMaskSpec` (sizes plus the 2D padding mask) that the
model hands unchanged to every layer; the first layer builds the `MMAMask` from the per-token ids
(model kwargs ``modality_ids`` / ``segment_ids`` / ``document_ids``, or a prebuilt ``mma_mask``) and
stores it on the spec, the other layers reuse it.
"""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Optional

import torch

from ..attention import _pick_backend
from ..mask import MMAMask
from ..validation import resolve_scale
from .ids import build_mma_mask, mma_ids_from_input_ids

NAME = "mma"
_ID_KEYS = ("modality_ids", "segment_ids", "document_ids")


class MMAMaskSpec:
    """What the ``"mma"`` mask builder returns instead of a dense mask: one per forward pass."""

    def __init__(self, batch_size, q_length, kv_length, attention_mask):
        self.batch_size, self.q_length, self.kv_length = batch_size, q_length, kv_length
        self.attention_mask = attention_mask  # 2D bool [B, kv] or None
        self.mask: Optional[MMAMask] = None

    def __repr__(self):
        return f"MMAMaskSpec(batch={self.batch_size}, q={self.q_length}, kv={self.kv_length})"


def _as_int(x):
    """A 1-element tensor offset (a StaticCache's, to avoid graph breaks) as an int, unless tracing."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not torch.compiler.is_compiling():
        return int(x.reshape(()))
    return x


def mma_mask_interface(batch_size, q_length=None, kv_length=None, q_offset=None, kv_offset=0,
                       attention_mask=None, cache_position=None, **kwargs):
    """`AttentionMaskInterface` entry for ``"mma"``: sizes + padding only, O(L).

    Accepts both calling conventions of transformers' mask interface: ``q_length``/``q_offset``
    (transformers 5.x, e.g. 5.17 and 5.23) and ``cache_position`` (older releases)."""
    if q_length is None:
        if cache_position is None:
            raise TypeError("mma_mask_interface: needs q_length (transformers 5) or cache_position (older)")
        q_length = cache_position.shape[0]
    if kv_length is None:
        raise TypeError("mma_mask_interface: needs kv_length")
    if q_offset is None:
        q_offset = cache_position[0] if cache_position is not None else kv_length - q_length
    q_offset, kv_offset = _as_int(q_offset), _as_int(kv_offset)
    if isinstance(kv_offset, int) and kv_offset != 0:
        raise ValueError(f"attn_implementation='mma': a cache that drops old keys (kv_offset={kv_offset}, a "
                         f"sliding-window cache) is not supported; use a DynamicCache")
    if isinstance(q_offset, int) and q_offset + q_length != kv_length:
        raise ValueError(
            f"attn_implementation='mma': queries must be the last keys (q_offset + q_length == kv_length), got "
            f"q_offset={q_offset}, q_length={q_length}, kv_length={kv_length}; a StaticCache or other "
            f"pre-allocated cache is not supported, use a DynamicCache"
        )
    if attention_mask is not None and attention_mask.dim() == 2:
        attention_mask = attention_mask[:, :kv_length]
    return MMAMaskSpec(batch_size, q_length, kv_length, attention_mask)


def _model_name(module) -> str:
    cfg = getattr(module, "config", None)
    return f"{type(module).__name__} ({getattr(cfg, 'model_type', '?')})"


def check_supported(module, dropout: float = 0.0, kv_len: Optional[int] = None, **kwargs) -> None:
    """Reject attention features the fused kernel does not implement, naming feature and model."""
    cfg = getattr(module, "config", None)
    name = _model_name(module)
    softcap = kwargs.get("softcap", None) or getattr(cfg, "attn_logit_softcapping", None)
    if softcap:
        raise ValueError(f"attn_implementation='mma': attention logit softcapping (softcap={softcap}) is not "
                         f"supported by the MMA kernel, model {name}")
    if kwargs.get("s_aux", None) is not None or kwargs.get("sinks", None) is not None:
        raise ValueError(f"attn_implementation='mma': attention sinks are not supported, model {name}")
    window = kwargs.get("sliding_window", None)
    if window is None:
        window = getattr(module, "sliding_window", None)
    if window is not None and kv_len is not None and kv_len > window:
        raise ValueError(f"attn_implementation='mma': sliding window attention (sliding_window={window}) shorter "
                         f"than the sequence ({kv_len} keys) is not supported by the MMA kernel, model {name}")
    if dropout and dropout > 0:
        raise ValueError(f"attn_implementation='mma': attention dropout (dropout={dropout}) is not supported by "
                         f"the MMA kernel, model {name}; set the config's attention_dropout to 0")


def _get_mask(attention_mask, kv_len, batch_size, device, kwargs) -> MMAMask:
    prebuilt = kwargs.get("mma_mask", None)
    if prebuilt is not None:
        if not isinstance(prebuilt, MMAMask):
            raise TypeError(f"mma_mask: expected an MMAMask, got {type(prebuilt).__name__}")
        return prebuilt
    spec = attention_mask if isinstance(attention_mask, MMAMaskSpec) else None
    if spec is not None and spec.mask is not None:
        return spec.mask
    if spec is not None:
        pad = spec.attention_mask
    elif attention_mask is None or (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2):
        pad = attention_mask
    else:
        raise ValueError(
            f"attention_mask: attn_implementation='mma' builds its mask from per-token ids; got a "
            f"{getattr(attention_mask, 'dim', lambda: '?')()}D mask. Pass a 2D padding mask plus modality_ids/"
            f"segment_ids/document_ids instead of a dense 4D mask"
        )
    policy = kwargs.get("mma_policy", None) or "mma"
    mask = build_mma_mask(kv_len, kwargs.get("modality_ids"), kwargs.get("segment_ids"), kwargs.get("document_ids"),
                          attention_mask=pad, position_ids=kwargs.get("position_ids"), policy=policy,
                          batch_size=batch_size, device=device)
    if spec is not None:
        spec.mask = mask
    return mask


def mma_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: Optional[float] = None, **kwargs):
    """`AttentionInterface` entry for ``"mma"``: q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D] -> ([B, Lq, Hq, D], None)."""
    B, Lk = key.shape[0], key.shape[2]
    check_supported(module, dropout, Lk, **kwargs)
    mask = _get_mask(attention_mask, Lk, B, query.device, kwargs)
    if mask.seq_len != Lk:
        raise ValueError(f"mma_mask: covers {mask.seq_len} positions, but this layer has {Lk} keys")
    from ..ops.library import mma_attention_op
    from ..validation import check_attention_inputs

    check_attention_inputs(query, key, value, mask, scaling)
    backend = _pick_backend(kwargs.get("mma_backend", None) or "auto", query.device)
    out, _ = mma_attention_op(query, key, value, mask, resolve_scale(scaling, query.shape[-1]), backend)
    return out.transpose(1, 2).contiguous(), None


_registered = False


def register() -> None:
    """Register ``"mma"`` with transformers' attention and mask interfaces (idempotent)."""
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, mma_attention_forward)
    AttentionMaskInterface.register(NAME, mma_mask_interface)
    _registered = True


# ---------------------------------------------------------------------------------------------- apply_mma
def _past_length(past_key_values) -> int:
    if past_key_values is None:
        return 0
    if hasattr(past_key_values, "get_seq_length"):
        return int(past_key_values.get_seq_length())
    return int(past_key_values[0][0].shape[-2])  # legacy tuple cache


def _check_model_features(model) -> None:
    cfg = model.config
    name = f"{type(model).__name__} ({getattr(cfg, 'model_type', '?')})"
    for attr in ("attn_logit_softcapping",):
        if getattr(cfg, attr, None):
            raise ValueError(f"apply_mma: attention logit softcapping ({attr}={getattr(cfg, attr)}) is not "
                             f"supported by the MMA kernel, model {name}")
    if getattr(cfg, "is_encoder_decoder", False):
        raise ValueError(f"apply_mma: encoder-decoder models are not supported, model {name}")


def apply_mma(
    model,
    image_token_id=None,
    answer_token_id=None,
    policy="mma",
    turn_token_id=None,
    backend: str = "auto",
):
    """Switch a loaded transformers decoder to modality-mutual attention, in place; returns the model.

    Afterwards ``model(...)`` and ``model.generate(...)`` accept ``modality_ids``, ``segment_ids``,
    ``document_ids`` ([B, L] over the input positions, from position 0: prompt for ``generate``,
    whole sequence otherwise) or, when ``image_token_id`` is given and the ids are not, derive them
    from ``input_ids`` with `mma_ids_from_input_ids` (segments break at ``answer_token_id`` and
    ``turn_token_id``). A prebuilt ``mma_mask=`` (`build_mma_mask`) is also accepted. The
    `MMAMask` is built once per forward pass and shared by all layers.
    """
    if not hasattr(model, "config") or not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"model: expected a transformers PreTrainedModel, got {type(model).__name__}")
    from ..policy import policy_bits

    policy_bits(policy)  # validate early
    from ..attention import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if image_token_id is not None:
        mma_ids_from_input_ids(torch.zeros(1, 1, dtype=torch.long), image_token_id, answer_token_id,
                               turn_token_id=turn_token_id)  # validates the token ids
        if answer_token_id is None:
            warnings.warn("apply_mma: no answer_token_id: each row is one mutual segment, so image tokens see every "
                          "later text token; only right for prompts that hold no answer", stacklevel=2)
    _check_model_features(model)
    register()
    model.set_attn_implementation(NAME)
    model._mma_config = dict(image_token_id=image_token_id, answer_token_id=answer_token_id, policy=policy,
                             turn_token_id=turn_token_id, backend=backend)
    if getattr(model, "_mma_patched", False):
        return model
    orig_forward = model.forward  # bound method
    orig_generate = model.generate

    def _derive(input_ids, attention_mask):
        c = model._mma_config
        if c["image_token_id"] is None or input_ids is None:
            return None, None
        return mma_ids_from_input_ids(input_ids, c["image_token_id"], c["answer_token_id"],
                                      turn_token_id=c["turn_token_id"])

    @functools.wraps(orig_forward)
    def forward(input_ids=None, attention_mask=None, *args, modality_ids=None, segment_ids=None,
                document_ids=None, mma_mask=None, **kwargs):
        c = model._mma_config
        past = kwargs.get("past_key_values", None)
        if mma_mask is None:
            embeds = kwargs.get("inputs_embeds", None)
            x = input_ids if input_ids is not None else embeds
            if x is None:
                raise ValueError("input_ids or inputs_embeds: one is required")
            B, q_len = x.shape[0], x.shape[1]
            past_len = _past_length(past)
            if modality_ids is None and past_len == 0:
                modality_ids, seg = _derive(input_ids, attention_mask)
                segment_ids = seg if segment_ids is None else segment_ids
            mma_mask = build_mma_mask(past_len + q_len, modality_ids, segment_ids, document_ids,
                                      attention_mask=attention_mask if (attention_mask is not None
                                                                        and attention_mask.dim() == 2) else None,
                                      position_ids=kwargs.get("position_ids"), policy=c["policy"],
                                      batch_size=B, device=x.device)
        return orig_forward(input_ids, attention_mask, *args, mma_mask=mma_mask, mma_backend=c["backend"], **kwargs)

    # generate() validates kwargs against the forward signature: expose the new ones
    sig = inspect.signature(orig_forward)
    params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None)
             for n in (*_ID_KEYS, "mma_mask") if n not in sig.parameters]
    var_kw = [p for p in sig.parameters.values() if p.kind == inspect.Parameter.VAR_KEYWORD]
    forward.__signature__ = sig.replace(parameters=params + extra + var_kw)

    @functools.wraps(orig_generate)
    def generate(inputs=None, *args, modality_ids=None, segment_ids=None, document_ids=None, **kwargs):
        input_ids = inputs if inputs is not None else kwargs.get("input_ids", None)
        if modality_ids is None and input_ids is not None and model._mma_config["image_token_id"] is not None:
            modality_ids, seg = _derive(input_ids, kwargs.get("attention_mask"))
            segment_ids = seg if segment_ids is None else segment_ids
        for n, t in (("modality_ids", modality_ids), ("segment_ids", segment_ids), ("document_ids", document_ids)):
            if t is not None:
                kwargs[n] = t
        return orig_generate(inputs, *args, **kwargs)

    model.forward = forward
    model.generate = generate
    model._mma_patched = True
    return model
