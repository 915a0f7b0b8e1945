"""Shared helpers for the transformers tests: tiny random models and the contract's dense mask.

The dense mask here is written straight from the rule in docs (semantics.md), independently of
`MMAMask`, and fed to the *eager* attention of transformers as an additive 4D mask.
"""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import mma_kernels  # noqa: E402,F401  (registers "mma")

IMAGE_PAIRS = {(1, 0)}  # the "mma" policy: image queries look ahead at text keys


def tiny_config(name: str, **over):
    base = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, attention_dropout=0.0, tie_word_embeddings=False)
    if name == "llama":
        cfg = transformers.LlamaConfig(**base)
    elif name == "mistral":
        cfg = transformers.MistralConfig(**base, sliding_window=4096)
    elif name == "qwen2":
        cfg = transformers.Qwen2Config(**base)
    elif name == "qwen3":
        cfg = transformers.Qwen3Config(**base, head_dim=16)
    elif name == "phi3":  # Phi-3.5-mini (AKI-4B's LLM) has head dim 96
        base.update(hidden_size=192, num_attention_heads=2, num_key_value_heads=2)
        cfg = transformers.Phi3Config(**base, pad_token_id=0)
    else:
        raise KeyError(name)
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


MODELS = ["llama", "mistral", "qwen2", "qwen3", "phi3"]


def model_pair(name: str, seed: int = 0, **over):
    """(eager model, copy with the same weights and attn_implementation='mma' via from_config)."""
    torch.manual_seed(seed)
    eager = transformers.AutoModelForCausalLM.from_config(tiny_config(name, **over), attn_implementation="eager")
    mma = transformers.AutoModelForCausalLM.from_config(tiny_config(name, **over), attn_implementation="mma")
    mma.load_state_dict(eager.state_dict())
    return eager.float(), mma.float()


def transformers_version():
    """(major, minor) of the installed transformers."""
    import transformers

    return tuple(int(x) for x in transformers.__version__.split(".")[:2])


def enable_checkpointing(model):
    """Gradient (activation) checkpointing, non-reentrant, by this transformers' name for it (5.24 renamed it)."""
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def disable_checkpointing(model):
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def cache_names(model):
    """The names this transformers' forward takes the KV cache by: ``cache`` (5.24+) and/or ``past_key_values``."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return [n for n in ("cache", "past_key_values") if n in params] or ["past_key_values"]


def out_cache(out):
    """The cache a forward returned, whatever the output field is called."""
    for n in ("cache", "past_key_values"):
        c = getattr(out, n, None)
        if c is not None:
            return c
    return None


def dense_allowed(mod, seg=None, doc=None, pairs=IMAGE_PAIRS, window=None):
    """bool [B, L, L] from the rule, with explicit loops: allowed(i, j) for query i, key j; a sliding `window`
    cuts the causal part only (i - j < window)."""
    B, L = mod.shape
    seg = torch.arange(L).expand(B, L) if seg is None else seg
    doc = torch.zeros(B, L, dtype=torch.long) if doc is None else doc
    out = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        m, s, d = mod[b].tolist(), seg[b].tolist(), doc[b].tolist()
        for i in range(L):
            for j in range(L):
                out[b, i, j] = (m[i] != -1 and m[j] != -1 and d[i] == d[j]
                                and ((j <= i and (window is None or i - j < window))
                                     or (s[i] == s[j] and (m[i], m[j]) in pairs)))
    return out


def additive(allowed, dtype=torch.float32):
    """The 4D additive mask eager attention takes: 0 where allowed, the dtype's min elsewhere."""
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]


def multimodal_batch(B=2, L=20, vocab=96, image_token=5, answer_token=6, left_pad=(0, 3), seed=1):
    """Token ids shaped like AKI prompts: text, image tokens, question, <|assistant|>, answer; left padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (B, L), generator=g)
    att = torch.ones(B, L, dtype=torch.long)
    for b in range(B):
        p = left_pad[b % len(left_pad)]
        att[b, :p] = 0
        ids[b, :p] = 0
        s = p + 2
        ids[b, s:s + 5] = image_token
        ids[b, s + 9] = answer_token
    return ids, att


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread per xdist worker avoids oversubscribing the 2 CI cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
