"""transformers glue: ``attn_implementation="mma"`` (attention + mask interface) and `apply_mma`.

``register()`` adds ``"mma"`` to ``transformers.AttentionInterface`` (the attention function) and to
``transformers.masking_utils.AttentionMaskInterface`` (the mask builder). The mask builder never
builds a dense 4D mask: it returns a small `MMAMaskSpec` (sizes plus the 2D padding mask) that the
model hands unchanged to every layer; the first layer attaches the `MMAMask` to it and the other
layers (and gradient-checkpointing recomputations) reuse it.

`apply_mma` sets ``"mma"`` on the language model's config only (vision towers and every other
sub-model keep their implementation), and wraps ``forward``/``generate`` keyword-only: the wrapper
builds the `MMAMask` from the ids (given, or derived from ``input_ids`` / ``labels``) and hands it
to the language model's attention layers through a per-model state object, never through the
forward kwargs (which transformers forwards to vision towers too).
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import torch

from ..attention import _pick_backend
from ..mask import MMAMask
from ..validation import MAX_HEAD_DIM, MIN_HEAD_DIM, resolve_scale
from .families import default_media_tokens, family_of, sub_configs, text_config_key
from .ids import (_documents_from_positions, _token_set, build_mma_mask, cut_segments, fit_mma_ids,
                  group_ids_from_token_type_ids, label_starts, mma_ids_from_input_ids)

NAME = "mma"
# The transformers releases CI runs the Hugging Face tests on (.ci/run): the oldest supported and the newest a
# fresh install gets. Older ones are refused at apply_mma; newer ones warn once.
TESTED_TRANSFORMERS = ("5.0.0", "5.25.0")
_warned_newer = False
_ID_KEYS = ("modality_ids", "segment_ids", "document_ids", "group_ids")
_GROUP_POLICY = {"image_blocks": "bidirectional_image", "prefix": "prefix"}


class MMAMaskSpec:
    """What the ``"mma"`` mask builder returns instead of a dense mask: one per forward pass.

    It poses as a prepared 4D mask (``ndim``/``shape``) so that a model re-entering
    ``create_causal_mask`` with it (PaliGemma's language model) gets it back unchanged."""

    ndim = 4

    def __init__(self, batch_size, q_length, kv_length, attention_mask):
        self.batch_size, self.q_length, self.kv_length = batch_size, q_length, kv_length
        self.attention_mask = attention_mask  # 2D bool [B, kv] or None
        self.mask: Optional[MMAMask] = None

    @property
    def shape(self):
        return (self.batch_size, 1, self.q_length, self.kv_length)

    def __repr__(self):
        return f"MMAMaskSpec(batch={self.batch_size}, q={self.q_length}, kv={self.kv_length})"


class _State:
    """Per patched model: the mask of the forward pass in flight, and the backend. Shared by its modules."""

    def __init__(self, backend="auto", own_rule=None):
        self.mask: Optional[MMAMask] = None
        self.build_args: Optional[dict] = None  # what built `mask`: re-fitted for caches holding fewer keys
        self.backend, self.own_rule = backend, own_rule
        self.weights = False  # output_attentions: also return the dense probabilities (debugging)
        self.sp = None  # sequence_parallel.SPState with apply_mma(..., sp_group=...)


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
    if isinstance(attention_mask, MMAMaskSpec):  # an inner model re-entering create_causal_mask
        return attention_mask
    if q_length is None:
        if cache_position is None:
            raise TypeError("mma_mask_interface: needs q_length (transformers 5) or cache_position (older)")
        q_length = cache_position.shape[0]
    if kv_length is None:
        raise TypeError("mma_mask_interface: needs kv_length")
    if q_offset is None:
        q_offset = cache_position[0] if cache_position is not None else kv_length - q_length
    q_offset, kv_offset = _as_int(q_offset), _as_int(kv_offset)
    # a sliding-window cache past its window holds only the last keys (kv_offset > 0): the attention
    # function fits the mask to them; queries must still be the last keys the layer holds
    if isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset + q_length > kv_offset + kv_length:
        raise ValueError(
            f"attn_implementation='mma': the queries' cache position (q_offset={q_offset}, q_length={q_length}) is "
            f"past the {kv_offset + kv_length} keys the cache holds: transformers before 5.3 advances cache_position "
            f"twice after a chunked prefill (prefill_chunk_size), which would shift every decoding position; "
            f"upgrade transformers to 5.3 or later, or generate without prefill_chunk_size")
    if isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset + q_length != kv_offset + kv_length:
        raise ValueError(
            f"attn_implementation='mma': queries must be the last keys (q_offset + q_length == kv_offset + "
            f"kv_length), got q_offset={q_offset}, q_length={q_length}, kv_offset={kv_offset}, "
            f"kv_length={kv_length}; a StaticCache or other pre-allocated cache is not supported, use a DynamicCache"
        )
    if attention_mask is not None and attention_mask.dim() == 2:
        start = kv_offset if isinstance(kv_offset, int) else 0
        attention_mask = attention_mask[:, start:start + kv_length]
    return MMAMaskSpec(batch_size, q_length, kv_length, attention_mask)


def _model_name(module) -> str:
    cfg = getattr(module, "config", None)
    return f"{type(module).__name__} ({getattr(cfg, 'model_type', '?')})"


def check_supported(module, dropout: float = 0.0, kv_len: Optional[int] = None, **kwargs) -> None:
    """Reject attention features the fused kernel does not implement, naming feature and model."""
    cfg = getattr(module, "config", None)
    name = _model_name(module)
    state = getattr(module, "_mma_state", None)
    prefix_lm = state is not None and state.own_rule == "prefix"  # PaliGemma: is_causal=False, the rule is the mask
    if not prefix_lm and (kwargs.get("is_causal", None) is False or getattr(module, "is_causal", True) is False):
        raise ValueError(f"attn_implementation='mma' is for the causal self-attention of a language model, but "
                         f"{name} is bidirectional (is_causal=False, e.g. a vision tower): set 'mma' on the text "
                         f"sub-config only (apply_mma does), keep this sub-model's own implementation")
    softcap = kwargs.get("softcap", None) or getattr(cfg, "attn_logit_softcapping", None)
    if softcap:
        raise ValueError(f"attn_implementation='mma': attention logit softcapping (softcap={softcap}) is not "
                         f"supported by the MMA kernel, model {name}")
    if kwargs.get("s_aux", None) is not None or kwargs.get("sinks", None) is not None:
        raise ValueError(f"attn_implementation='mma': attention sinks are not supported, model {name}")
    if dropout and dropout > 0:
        raise ValueError(f"attn_implementation='mma': attention dropout (dropout={dropout}) is not supported by "
                         f"the MMA kernel, model {name}; set the config's attention_dropout to 0")


def _mask_from_kwargs(pad, kv_len, batch_size, device, kwargs) -> MMAMask:
    """Without apply_mma: the ids (or a prebuilt ``mma_mask``) ride in the forward kwargs (text decoders)."""
    prebuilt = kwargs.get("mma_mask", None)
    if prebuilt is not None:
        if not isinstance(prebuilt, MMAMask):
            raise TypeError(f"mma_mask: expected an MMAMask, got {type(prebuilt).__name__}")
        return prebuilt
    if kwargs.get("modality_ids", None) is None:
        raise ValueError("attn_implementation='mma': no modality ids for this forward pass. Call "
                         "mma_kernels.apply_mma(model) (it derives them from input_ids / labels), or pass "
                         "modality_ids=... (and segment_ids/document_ids; all zeros for an all-text batch)")
    return build_mma_mask(kv_len, kwargs.get("modality_ids"), kwargs.get("segment_ids"), kwargs.get("document_ids"),
                          attention_mask=pad, position_ids=kwargs.get("position_ids"),
                          policy=kwargs.get("mma_policy", None) or "mma", batch_size=batch_size, device=device)


def _get_mask(module, attention_mask, kv_len, batch_size, device, kwargs) -> MMAMask:
    spec = attention_mask if isinstance(attention_mask, MMAMaskSpec) else None
    if spec is not None and spec.mask is not None:
        return spec.mask
    if spec is None and attention_mask is not None and not (
            isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2):
        raise ValueError(
            f"attention_mask: attn_implementation='mma' builds its mask from per-token ids; got a "
            f"{getattr(attention_mask, 'dim', lambda: '?')()}D mask it did not build ({type(attention_mask).__name__}). "
            f"Pass a 2D padding mask plus modality_ids/segment_ids/document_ids instead of a dense 4D mask")
    state = getattr(module, "_mma_state", None)
    if state is not None and state.mask is not None:
        mask = state.mask
    else:
        mask = _mask_from_kwargs(spec.attention_mask if spec is not None else attention_mask, kv_len, batch_size,
                                 device, kwargs)
    if spec is not None:
        spec.mask = mask
    return mask


def mma_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: Optional[float] = None, **kwargs):
    """`AttentionInterface` entry for ``"mma"``: q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D] -> ([B, Lq, Hq, D], None)."""
    B, Lk = key.shape[0], key.shape[2]
    check_supported(module, dropout, Lk, **kwargs)
    window = kwargs.get("sliding_window", None)
    if window is None:
        window = getattr(module, "sliding_window", None)
    state = getattr(module, "_mma_state", None)
    if state is not None and state.sp is not None and state.sp.plan is not None:  # this rank's shard of the row
        backend = _pick_backend(kwargs.get("mma_backend", None) or state.backend, query.device)
        mask = _get_mask(module, attention_mask, state.sp.plan.seq_len, B, query.device, kwargs)  # the whole row's
        out = state.sp.attention(query, key, value, mask, resolve_scale(scaling, query.shape[-1]), backend, window)
        return out.transpose(1, 2).contiguous(), None
    mask = _get_mask(module, attention_mask, Lk, B, query.device, kwargs)
    if mask.seq_len != Lk:
        mask = _tail_mask(module, mask, state, attention_mask, Lk, query.shape[2], window)
    from ..ops.library import mma_attention_op
    from ..validation import check_attention_inputs

    check_attention_inputs(query, key, value, mask, scaling, window=window)
    window = mask.effective_window(window)
    win = mask.window_fields(window) if window is not None else None
    backend = _pick_backend(kwargs.get("mma_backend", None) or (state.backend if state else "auto"), query.device)
    scale = resolve_scale(scaling, query.shape[-1])
    out, _ = mma_attention_op(query, key, value, mask, scale, backend, win, window)
    weights = None
    want = state.weights if state is not None else (
        kwargs.get("output_attentions", None) or getattr(getattr(module, "config", None), "output_attentions", False))
    if want:  # output_attentions=True: the dense probabilities, O(Lq * Lk)
        from ..reference import mma_attention_weights

        weights = mma_attention_weights(query, key, mask, scale, window)
    return out.transpose(1, 2).contiguous(), weights


def _tail_mask(module, mask, state, spec, Lk, q_len, window):
    """A layer whose cache holds only the last ``Lk`` keys (a sliding-window cache past its window): the mask
    over those keys, exact when no query may see a dropped key (checked), else a clear error."""
    N = mask.seq_len
    where = f"layer {_model_name(module)} has {Lk} keys but the mask covers {N} positions"
    if Lk > N or window is None or state is None or state.build_args is None:
        raise ValueError(f"mma_mask: {where} (a cache that keeps fewer keys than the sequence is only supported for "
                         f"sliding-window layers of a model patched with apply_mma)")
    cache = spec.__dict__.setdefault("_tails", {}) if isinstance(spec, MMAMaskSpec) else {}
    if Lk in cache:
        return cache[Lk]
    from ..mask import MMAMask, WIN_KV_LO

    off = N - Lk
    lo = mask.window_fields(mask.effective_window(window) or N)[:, WIN_KV_LO, N - q_len:]
    if bool((lo < off).any()):
        raise ValueError(f"mma_mask: {where}: a query of this step may see a key the sliding-window cache dropped "
                         f"(a group or segment reaching back beyond the window); use a DynamicCache without sliding "
                         f"layers (e.g. cache_implementation='dynamic_full') or a shorter prompt")
    a = state.build_args
    mod, seg, doc, _, grp = fit_mma_ids(N, a["modality_ids"], a["segment_ids"], a["document_ids"],
                                        a["attention_mask"], a["position_ids"], a["batch_size"], a["device"],
                                        a["group_ids"])
    sl = (lambda t: None if t is None else t[:, off:].to(mask.device))  # noqa: E731
    gkw = {} if grp is None else dict(group_ids=sl(grp), group_policy=a["group_policy"])
    tail = MMAMask(sl(mod), sl(seg), sl(doc), policy=a["policy"], **gkw)
    cache[Lk] = tail
    return tail


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
# What transformers has called the KV cache in `forward`/`generate` kwargs: `past_key_values` up to 5.23,
# `cache` from 5.24 (`past_key_values` still accepted there, deprecated until 5.40).
CACHE_NAMES = ("cache", "past_key_values")


def _cache_of(kw):
    """The KV cache of a forward call, whatever this transformers calls it (None if absent)."""
    for name in CACHE_NAMES:
        c = kw.get(name, None)
        if c is not None:
            return c
    return None


def _past_length(past_key_values) -> int:
    if past_key_values is None:
        return 0
    if hasattr(past_key_values, "get_seq_length"):
        return int(past_key_values.get_seq_length())
    return int(past_key_values[0][0].shape[-2])  # legacy tuple cache


def _check_model_features(model, text_cfg, text_key, own_rule) -> None:
    """Features the kernel lacks, on every sub-config that will run MMA (named by its dotted key).

    PaliGemma's Gemma sets ``use_bidirectional_attention``, but its real rule is the mask: causal plus the
    prefix from token_type_ids (the family's own rule), so it is not rejected as bidirectional."""
    cfg = model.config
    name = f"{type(model).__name__} ({getattr(cfg, 'model_type', '?')})"
    if getattr(cfg, "is_encoder_decoder", False):
        raise ValueError(f"apply_mma: encoder-decoder models are not supported, model {name}")
    for key, sub in sub_configs(text_cfg, text_key or ""):
        where = f"sub-model '{key}' ({getattr(sub, 'model_type', '?')}) of {name}"
        if getattr(sub, "attn_logit_softcapping", None):
            raise ValueError(f"apply_mma: attention logit softcapping (attn_logit_softcapping="
                             f"{sub.attn_logit_softcapping}) is not supported by the MMA kernel, {where}")
        bidirectional = getattr(sub, "use_bidirectional_attention", False) and own_rule != "prefix"
        if bidirectional or getattr(sub, "is_causal", True) is False:
            raise ValueError(f"apply_mma: a bidirectional language model (use_bidirectional_attention / "
                             f"is_causal=False) is not supported, {where}")
        if getattr(sub, "model_type", "") in ("gpt_oss",) or getattr(sub, "use_sinks", False):
            raise ValueError(f"apply_mma: attention sinks are not supported by the MMA kernel, {where}")
        hd = _head_dim(sub)
        if isinstance(hd, int) and not MIN_HEAD_DIM <= hd <= MAX_HEAD_DIM:
            raise ValueError(f"apply_mma: head dim {hd} is out of the kernel's range {MIN_HEAD_DIM}..{MAX_HEAD_DIM}, "
                             f"{where}")


def _version_tuple(v: str):
    """(major, minor, patch) of a version string ("5.25.0.dev0" -> (5, 25, 0))."""
    import re

    nums = [int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums)))


def check_transformers_version(version: Optional[str] = None) -> None:
    """Refuse a transformers older than the oldest tested release; warn once for one newer than the newest."""
    global _warned_newer
    import warnings

    if version is None:
        import transformers

        version = transformers.__version__
    lo, hi = TESTED_TRANSFORMERS
    v = _version_tuple(version)
    if v < _version_tuple(lo):
        raise RuntimeError(f"apply_mma: transformers {version} is older than the oldest supported release {lo} "
                           f"(tested: {lo} .. {hi}); pip install 'transformers>={lo}'")
    if v[:2] > _version_tuple(hi)[:2] and not _warned_newer:
        _warned_newer = True
        warnings.warn(f"apply_mma: transformers {version} is newer than the releases mma-kernels was tested with "
                      f"({lo} .. {hi}); if generate() or the mask misbehaves, pin transformers=={hi} and report it",
                      UserWarning, stacklevel=3)


def _head_dim(cfg):
    hd = getattr(cfg, "head_dim", None)
    if hd is None and getattr(cfg, "hidden_size", None) and getattr(cfg, "num_attention_heads", None):
        hd = cfg.hidden_size // cfg.num_attention_heads
    return hd


def _check_token_ids(name, value, vocab, allowed_oov):
    for v in value:
        if v < 0 or (vocab is not None and v >= vocab and v not in allowed_oov):
            raise ValueError(f"apply_mma: {name}={v} is outside the vocabulary (0..{vocab - 1 if vocab else '?'}) "
                             f"of the language model")


def apply_mma(
    model,
    image_token_id=None,
    answer_token_id=None,
    policy="mma",
    turn_token_id=None,
    backend: str = "auto",
    tokenizer=None,
    sp_group=None,
    sp_mode: str = "ulysses",
):
    """Switch a loaded transformers decoder or VLM to modality-mutual attention, in place; returns it.

    Only the language model's attention changes (``"mma"`` is set on the text sub-config; vision
    towers keep their own implementation). Afterwards ``model(...)`` and ``model.generate(...)``
    take ``modality_ids``, ``segment_ids``, ``document_ids`` ([B, L] over the input positions, from
    position 0: the prompt for ``generate``) or a prebuilt ``mma_mask=``; when the ids are not
    given they are derived from ``input_ids``:

    - modality: ``image_token_id`` (default: the config's image and video placeholder ids);
    - segments: a segment closes with every ``answer_token_id`` and a new one starts at every
      ``turn_token_id`` (default: the family's turn-start marker looked up in ``tokenizer``, if
      given) and at every supervised token of ``labels``, and at document boundaries;
    - documents: ``document_ids``, or restarting ``position_ids`` (packed rows, M-RoPE included).

    Training (``model.training``) on a batch with images and no way to find the answer boundary
    (no labels, no answer/turn token) raises. A batch without image tokens is plain causal.

    Sequence parallelism (training): ``sp_group`` (a process group; every rank of it calls the model on the
    same whole row) and ``sp_mode`` (``"ulysses"``: heads scattered; ``"context"``: K/V gathered). The decoder
    layers run on this rank's positions of a balanced plan (``model._mma_state.sp.plan``); the model returns
    those positions' logits and this rank's share of the loss (shares and gradients sum to the single-process
    ones over the group: `mma_kernels.integrations.sequence_parallel.sum_gradients`). See docs/distributed.md.
    """
    if not hasattr(model, "config") or not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"model: expected a transformers PreTrainedModel, got {type(model).__name__}")
    check_transformers_version()
    from ..attention import BACKENDS
    from ..policy import policy_bits

    policy_bits(policy)  # validate early
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    cfg = model.config
    text_cfg, text_key = text_config_key(cfg)
    fam = family_of(cfg)
    config_media = default_media_tokens(cfg) or ()
    if image_token_id is None:
        image_token_id = config_media or None
    if turn_token_id is None and tokenizer is not None and fam.turn_marker is not None:
        tid = tokenizer.convert_tokens_to_ids(fam.turn_marker)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            turn_token_id = tid
    vocab = getattr(text_cfg, "vocab_size", None)
    for nm, v in (("image_token_id", image_token_id), ("answer_token_id", answer_token_id),
                  ("turn_token_id", turn_token_id)):
        if v is not None:
            _check_token_ids(nm, _token_set(nm, v).tolist(), vocab, config_media if nm == "image_token_id" else ())
    _check_model_features(model, text_cfg, text_key, fam.own_rule)
    register()
    if text_key is None:
        model.set_attn_implementation(NAME)
    else:
        before = {k: c._attn_implementation for k, c in sub_configs(cfg) if k != text_key}
        try:
            model.set_attn_implementation({text_key: NAME})
        except (TypeError, ValueError, AttributeError, KeyError):  # a transformers without dict support here
            pass
        for k, c in sub_configs(cfg):  # transformers versions that apply a dict differently: enforce it
            if k == text_key or k.startswith(text_key + "."):
                c._attn_implementation_internal = NAME
            elif c._attn_implementation != before[k]:
                c._attn_implementation_internal = before[k]
    from .sequence_parallel import SPState, install

    sp = SPState(sp_group, sp_mode) if sp_group is not None else None
    state = getattr(model, "_mma_state", None) or _State()
    state.backend, state.own_rule, state.sp = backend, fam.own_rule, sp
    model._mma_state = state
    for m in _language_model(model, text_cfg).modules():  # only the language model's layers see the mask
        m._mma_state = state
    model._mma_config = dict(image_token_id=image_token_id, answer_token_id=answer_token_id, policy=policy,
                             turn_token_id=turn_token_id, own_rule=fam.own_rule, mrope=fam.mrope)
    install(model, text_cfg, sp)
    if getattr(model, "_mma_patched", False):
        return model
    _wrap(model, state)
    return model


def _language_model(model, text_cfg):
    if model.config is text_cfg:
        return model
    from transformers import PreTrainedModel

    for m in model.modules():
        if m is not model and isinstance(m, PreTrainedModel) and m.config is text_cfg:
            return m
    raise ValueError(f"apply_mma: cannot find the language model of {type(model).__name__} (no sub-model with its "
                     f"text config)")


def _positional_names(fn):
    sig = inspect.signature(fn)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sig, [p.name for p in sig.parameters.values() if p.kind in kinds]


def _by_keyword(fname, names, args, kwargs):
    if len(args) > len(names):
        raise TypeError(f"{fname}() takes {len(names)} positional arguments but {len(args)} were given")
    for n, a in zip(names, args):
        if n in kwargs:
            raise TypeError(f"{fname}() got multiple values for argument {n!r}")
        kwargs[n] = a
    return kwargs


def _is_lm_head(model) -> bool:
    """Whether the model predicts next tokens (its ``labels`` are token ids [B, L]); False for base models and
    sequence/token classification or QA heads, whose labels are class ids and hold no answer to protect."""
    can = getattr(model, "can_generate", None)
    return bool(can()) if callable(can) else hasattr(model, "generate")


def _derive(model, input_ids, labels=None, document_ids=None, prompt=False):
    """(modality_ids, segment_ids) from token ids (and labels / document ids), or (None, None).
    ``prompt``: a generation prompt (it holds no answer to protect, one segment per row is right)."""
    c = model._mma_config
    if c["image_token_id"] is None:
        return None, None
    if not _is_lm_head(model):
        # labels of a classification head are class ids: never segment boundaries; no token predicts the next,
        # so nothing can leak and a classifier's row is one prompt. A base model (no head, no labels) keeps the
        # training check below: its caller may compute a next-token loss.
        prompt = prompt or labels is not None
        labels = None
    mod, seg = mma_ids_from_input_ids(input_ids, c["image_token_id"], c["answer_token_id"],
                                      turn_token_id=c["turn_token_id"], document_ids=document_ids)
    has_boundary = c["answer_token_id"] is not None or c["turn_token_id"] is not None or labels is not None
    if not has_boundary and not prompt and model.training and bool((mod == 1).any()):
        raise ValueError("apply_mma: training on a batch with images, but no way to find where answers start: pass "
                         "labels (the first supervised token of each answer starts a new segment), or "
                         "answer_token_id / turn_token_id (or tokenizer=) to apply_mma, or explicit segment_ids")
    starts = label_starts(labels) if labels is not None else None
    if starts is not None and starts.shape != seg.shape:
        raise ValueError(f"labels: expected shape {tuple(seg.shape)} (as input_ids), got {tuple(starts.shape)}")
    if starts is not None or document_ids is not None:
        seg = cut_segments(seg, starts, document_ids)
    return mod, seg


def packed_documents(kw, batch_size, length, device):
    """Document ids [B, L] of a packed forward without a cache, or None: from ``cu_seq_lens_q`` (transformers'
    flash-attention kwargs, e.g. ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``), else from
    restarting ``position_ids`` (2D, 3D or 4D M-RoPE) when no padding mask is in play."""
    cu = kw.get("cu_seq_lens_q", None)
    if isinstance(cu, torch.Tensor) and cu.dim() == 1 and batch_size == 1 and int(cu[-1]) == length:
        idx = torch.arange(length, device=cu.device)
        return (torch.searchsorted(cu[1:].contiguous(), idx, right=True)).view(1, length).to(device)
    pos, att = kw.get("position_ids", None), kw.get("attention_mask", None)
    if not isinstance(pos, torch.Tensor) or pos.shape[-1] != length or pos.dim() not in (2, 3):
        return None
    if att is not None and not bool(att.bool().all()):
        return None
    pos = pos.to(device)
    pos = pos.expand(batch_size, -1) if pos.dim() == 2 else pos.expand(pos.shape[0], batch_size, -1)
    return _documents_from_positions(pos)


def _own_groups(model, kw, group_ids):
    """Group ids for the model's own rule (Gemma 3 image blocks, PaliGemma prefix) from token_type_ids."""
    rule = model._mma_config["own_rule"]
    if group_ids is not None or rule is None or kw.get("token_type_ids", None) is None:
        return group_ids
    return group_ids_from_token_type_ids(kw["token_type_ids"], rule)


def _forward_sequence_parallel(orig_forward, kw, state):
    """The whole row in, this rank's shard of the decoder out: logits at ``plan.positions(rank)`` and this rank's
    share of the whole row's loss (the model's own loss would pair shard logits with whole-row labels)."""
    if state.weights:
        raise ValueError("output_attentions: not supported with sp_group (each rank holds a shard of the rows)")
    if _cache_of(kw) is not None:
        raise ValueError("cache: a KV cache is not supported with sp_group (sequence parallelism is for training)")
    labels = kw.pop("labels", None)
    kw["use_cache"] = False
    sp = state.sp
    sp.begin(state.mask)  # the plan stays until the next forward: gradient checkpointing recomputes with it
    try:
        out = orig_forward(**kw)
    finally:
        state.mask, state.weights = None, False
    if labels is not None:
        out["loss"] = sp.loss(out.logits, labels)
    return out


def _wrap(model, state):
    orig_forward = model.forward  # bound method
    orig_generate = getattr(model, "generate", None)  # base models and classification heads have none
    fsig, fnames = _positional_names(orig_forward)
    gnames = _positional_names(orig_generate)[1] if orig_generate is not None else []

    def _mask_for(kw, modality_ids, segment_ids, document_ids, group_ids):
        c = model._mma_config
        att = kw.get("attention_mask", None)
        if att is not None and not (isinstance(att, torch.Tensor) and att.dim() == 2):
            got = "a dict of masks" if isinstance(att, dict) else f"a {getattr(att, 'dim', lambda: '?')()}D mask"
            raise ValueError(
                f"attention_mask: after apply_mma the mask is built from per-token ids; got {got}. "
                f"Pass the 2D padding mask plus modality_ids/segment_ids/document_ids instead of a dense mask")
        input_ids, embeds = kw.get("input_ids", None), kw.get("inputs_embeds", None)
        x = input_ids if input_ids is not None else embeds
        if x is None:
            raise ValueError("input_ids or inputs_embeds: one is required")
        B, q_len = x.shape[0], x.shape[1]
        past_len = _past_length(_cache_of(kw))
        if past_len == 0:
            group_ids = _own_groups(model, kw, group_ids)
            if document_ids is None and (modality_ids is None or modality_ids.shape[-1] == q_len):
                # (ids given over a prompt only, e.g. by generate, never span a packed row)
                document_ids = packed_documents(kw, B, q_len, x.device)
        if modality_ids is None:
            if past_len == 0 and input_ids is not None:
                modality_ids, seg = _derive(model, input_ids, kw.get("labels", None), document_ids)
                segment_ids = seg if segment_ids is None else segment_ids
            elif c["image_token_id"] is not None:
                what = ("inputs_embeds without input_ids" if input_ids is None
                        else f"a forward over a cache of {past_len} tokens")
                raise ValueError(f"apply_mma: {what}: image positions cannot be found. Pass modality_ids (and "
                                 f"segment_ids) covering the whole sequence, e.g. from "
                                 f"mma_kernels.mma_ids_from_input_ids(input_ids, ...); generate() does it for you")
        pos = kw.get("position_ids", None)
        if (c["mrope"] and past_len == 0 and isinstance(pos, torch.Tensor) and pos.dim() == 2
                and modality_ids is not None and bool((modality_ids == 1).any())):
            # 2D positions (e.g. transformers' DataCollatorWithFlattening) on an M-RoPE model would flatten the
            # images' 3D positions. They have served to find the documents; the model computes its own 3D
            # positions over the row instead, which inside each document equal the sample's own positions up
            # to one constant shift on every axis (RoPE scores depend on position differences only).
            kw["position_ids"] = None
        args = dict(modality_ids=modality_ids, segment_ids=segment_ids, document_ids=document_ids,
                    attention_mask=att, position_ids=kw.get("position_ids", None), batch_size=B, device=x.device,
                    group_ids=group_ids, policy=c["policy"],
                    group_policy=_GROUP_POLICY.get(c["own_rule"], "bidirectional_image"))
        state.build_args = args
        kv = dict(args)
        if group_ids is None:  # no second level: leave the group arguments out
            kv.pop("group_ids"), kv.pop("group_policy")
        return build_mma_mask(past_len + q_len, **kv)

    @functools.wraps(orig_forward)
    def forward(*args, modality_ids=None, segment_ids=None, document_ids=None, group_ids=None, mma_mask=None,
                **kwargs):
        kw = _by_keyword("forward", fnames, args, kwargs)
        state.build_args = None
        if mma_mask is None:
            mma_mask = _mask_for(kw, modality_ids, segment_ids, document_ids, group_ids)
        elif not isinstance(mma_mask, MMAMask):
            raise TypeError(f"mma_mask: expected an MMAMask, got {type(mma_mask).__name__}")
        state.mask = mma_mask
        state.weights = bool(kw.get("output_attentions", None) if kw.get("output_attentions", None) is not None
                             else getattr(model.config, "output_attentions", False))
        if state.sp is not None:
            return _forward_sequence_parallel(orig_forward, kw, state)
        try:
            return orig_forward(**kw)
        finally:
            state.mask, state.weights = None, False

    # generate() validates kwargs against the forward signature: expose the new ones
    params = [p for p in fsig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None)
             for n in (*_ID_KEYS, "mma_mask") if n not in fsig.parameters]
    var_kw = [p for p in fsig.parameters.values() if p.kind == inspect.Parameter.VAR_KEYWORD]
    forward.__signature__ = fsig.replace(parameters=params + extra + var_kw)

    @functools.wraps(orig_generate)
    def generate(*args, modality_ids=None, segment_ids=None, document_ids=None, group_ids=None, **kwargs):
        if state.sp is not None:
            raise ValueError("generate: not supported on a model patched with sp_group (sequence parallelism is for "
                             "training); apply_mma(model) again without sp_group to generate")
        kw = _by_keyword("generate", gnames, args, kwargs)
        input_ids = kw.get("inputs", None)
        if input_ids is None:
            input_ids = kw.get("input_ids", None)
        group_ids = _own_groups(model, kw, group_ids)  # over the prompt; decoding steps get their own groups
        if modality_ids is None and isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
            if model._mma_config["image_token_id"] is not None:
                modality_ids, seg = _derive(model, input_ids, None, document_ids, prompt=True)
                segment_ids = seg if segment_ids is None else segment_ids
        for n, t in (("modality_ids", modality_ids), ("segment_ids", segment_ids), ("document_ids", document_ids),
                     ("group_ids", group_ids)):
            if t is not None:
                kw[n] = t
        return orig_generate(**kw)

    model.forward = forward
    if orig_generate is not None:
        model.generate = generate
    model._mma_patched = True


__all__ = ["apply_mma", "register", "MMAMaskSpec", "mma_attention_forward", "mma_mask_interface", "check_supported"]
