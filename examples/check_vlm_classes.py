"""Per-class check of `apply_mma` on tiny random Hugging Face VLMs (fp32, CPU), as a table.

    python examples/check_vlm_classes.py [class ...]       # default: all of tiny_vlms.CLASSES

For each class: a batch of 2 rows with left padding, real image placeholders and pixel inputs.
Reference = the same weights with eager attention, whose language model gets the dense additive mask
written from the contract's rule (helper `rule_mask`, from hand-laid ids, not from the package), OR the
model's own rule from its token_type_ids (Gemma 3 image blocks, PaliGemma prefix), with Gemma 3's sliding
window (6, shorter than the rows) on its sliding layers.
Columns: forward+backward with labels ok; generate ok (every step's logits vs the reference); max |logit|
difference vs the reference over valid positions; max |difference| of the image features vs the native
model (vision tower untouched); max |logit difference| at image positions between MMA and plain causal
(MMA visibly active).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_vlms as tv  # noqa: E402

ANS = 100  # the answer marker token (e.g. <|assistant|>)
PAD_LEFT = (0, 3)


def batch(name, n_img=1):
    """Hand-laid rows: [pad]*p, 1, 3 (Qwen-VL: 118 = <|vision_start|>), <image>*n, 10, 11, 12, ANS, 20, 21, 22,
    with the ids the rule needs.

    Returns (inputs for the model, expected modality ids, expected segment ids, labels)."""
    pix, per = tv.pixel_inputs(name, 2 * n_img)
    if per is None:  # LLaVA-NeXT / OneVision: tokens per image depend on the tiling; ask the model once
        per = 10
    # Qwen-VL: the image follows <|vision_start|> (118 in the tiny config), as its processor writes it
    lead = [1, 118] if name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl") else [1, 3]
    body = lead + [tv.IMG] * (per * n_img) + [10, 11, 12, ANS, 20, 21, 22]
    L = len(body) + max(PAD_LEFT)
    ids = torch.zeros(2, L, dtype=torch.long)
    att = torch.zeros(2, L, dtype=torch.long)
    mod = torch.full((2, L), -1, dtype=torch.long)
    seg = torch.zeros(2, L, dtype=torch.long)
    labels = torch.full((2, L), -100, dtype=torch.long)
    for b in range(2):
        p = L - len(body)
        ids[b, p:] = torch.tensor(body)
        att[b, p:] = 1
        mod[b, p:] = 0
        mod[b, p + 2:p + 2 + per * n_img] = 1
        a = p + body.index(ANS)  # segment 0 runs through the answer marker; each answer token its own
        seg[b, a + 1:] = torch.arange(1, L - a)
        labels[b, a + 1:] = ids[b, a + 1:]
    inputs = dict(input_ids=ids, attention_mask=att, **pix)
    if name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl") and takes_mm_token_types():
        inputs["mm_token_type_ids"] = (ids == tv.IMG).long()
    if name == "gemma3":  # the processor's token types: 1 on image tokens (bidirectional image blocks)
        inputs["token_type_ids"] = (mod == 1).long()
    if name == "paligemma":  # 0 on the prefix (image + prompt through the marker), 1 on the answer
        inputs["token_type_ids"] = (seg > 0).long()
    return inputs, mod, seg, labels


def takes_mm_token_types() -> bool:
    """Whether this transformers' Qwen-VL models take ``mm_token_type_ids`` (the processors' output from 5.x
    releases after 5.0; 5.0 finds image positions from input_ids alone)."""
    import inspect

    from transformers import Qwen2VLModel

    return "mm_token_type_ids" in inspect.signature(Qwen2VLModel.get_rope_index).parameters


def own_rule(name, inputs):
    """bool [B, L, L]: the model's own non-causal attention, by hand (None for models without one)."""
    if name not in ("gemma3", "paligemma"):
        return None
    tt, att = inputs["token_type_ids"], inputs["attention_mask"]
    B, L = tt.shape
    out = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        t, v = tt[b].tolist(), att[b].tolist()
        for i in range(L):
            for j in range(L):
                if v[i] and v[j]:  # one image per row here: every image token is in the same block
                    out[b, i, j] = (t[i] == t[j] == 1) if name == "gemma3" else (t[i] == t[j] == 0)
    return out


def window_of(name):
    return tv.SLIDING_WINDOW if name == "gemma3" else None


def rule_mask(mod, seg, own=None, window=None):
    """bool [B, L, L] straight from the rule: allowed(i, j), query i, key j (policy "mma"), OR the model's own
    rule `own`; a sliding `window` cuts the causal part only (i - j < window)."""
    B, L = mod.shape
    out = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        m, s = mod[b].tolist(), seg[b].tolist()
        for i in range(L):
            for j in range(L):
                causal = j <= i and (window is None or i - j < window)
                out[b, i, j] = m[i] != -1 and m[j] != -1 and (causal or (s[i] == s[j] and (m[i], m[j]) == (1, 0)))
    return out if own is None else out | own[:, :L, :L]


def reference_masks(name, inputs, mod, seg):
    """(dense mask of full-attention layers, of sliding layers or None) for the rows in `inputs`."""
    own = own_rule(name, inputs)
    w = window_of(name)
    return rule_mask(mod, seg, own), (rule_mask(mod, seg, own, w) if w else None)


def language_model(model):
    from transformers import PreTrainedModel

    text = model.config.get_text_config()
    for m in model.modules():
        if m is not model and isinstance(m, PreTrainedModel) and m.config is text:
            return m
    raise LookupError(type(model).__name__)


def eager_with_dense(model, inputs, masks, **kw):
    """Run the eager model with its language model fed the additive 4D masks (full, sliding or None)."""
    lm = language_model(model)
    full, sliding = masks
    bias = lambda a: torch.where(a, 0.0, torch.finfo(torch.float32).min)[:, None]  # noqa: E731

    def hook(mod, args, kwargs):
        q = kwargs["inputs_embeds"].shape[1]
        kwargs["attention_mask"] = (bias(full)[..., -q:, :] if sliding is None else
                                    {"full_attention": bias(full)[..., -q:, :],
                                     "sliding_attention": bias(sliding)[..., -q:, :]})
        return args, kwargs

    h = lm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return model(**inputs, **kw)
    finally:
        h.remove()


def image_features(model, inputs):
    keys = ("pixel_values", "image_sizes", "image_grid_thw", "pixel_attention_mask")
    out = model.model.get_image_features(**{k: v for k, v in inputs.items() if k in keys})
    flat = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            flat.append(x.reshape(-1))
        elif isinstance(x, dict) or hasattr(x, "to_tuple"):
            for v in (x.values() if isinstance(x, dict) else x.to_tuple()):
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(out)
    return torch.cat(flat)


def check(name):
    from mma_kernels import apply_mma

    eager = tv.make_model(name, "eager")
    mma = tv.make_model(name, "eager")
    vision_impl = {k: c._attn_implementation for k, c in _subs(mma.config)}
    apply_mma(mma, answer_token_id=ANS)
    inputs, mod, seg, labels = batch(name)
    valid = inputs["attention_mask"].bool()
    row = {"class": type(mma).__name__}
    # vision tower untouched: same implementation, same features as the native model
    text_key = [k for k, c in _subs(mma.config) if c is mma.config.get_text_config()][0]
    row["other sub-models kept"] = all(c._attn_implementation == vision_impl[k] for k, c in _subs(mma.config)
                                       if k != text_key)
    with torch.no_grad():
        row["vision diff"] = (image_features(mma, inputs) - image_features(eager, inputs)).abs().max().item()
        ref = eager_with_dense(eager, inputs, reference_masks(name, inputs, mod, seg)).logits
        got = mma(**inputs).logits
        row["max logit diff"] = (got[valid] - ref[valid]).abs().max().item()
        plain = {k: v for k, v in inputs.items() if not (name == "paligemma" and k == "token_type_ids")}
        causal = mma(**plain, modality_ids=torch.zeros_like(mod)).logits  # (PaliGemma's prefix covers MMA)
        row["mma effect"] = (mma(**plain).logits[mod == 1] - causal[mod == 1]).abs().max().item()
    mma.train()
    out = mma(**inputs, labels=labels)
    out.loss.backward()
    grads = [p.grad for p in mma.parameters() if p.grad is not None]
    row["fwd+bwd"] = bool(torch.isfinite(out.loss)) and len(grads) > 0 and all(torch.isfinite(g).all() for g in grads)
    mma.eval()
    # generate: prompt = rows up to and including ANS; every step's logits vs the reference recomputed in full
    g, diffs = generate_step_diffs(name, eager, mma, inputs, mod, seg)
    row["generate every-step diff"] = max(diffs)
    row["generate ok"] = g.sequences.shape[1] == inputs["input_ids"].shape[1] and max(diffs) < 1e-4
    return row


def generate_step_diffs(name, eager, mma, inputs, mod, seg, new_tokens=3):
    """Batched, left-padded greedy ``mma.generate`` from the rows cut after the answer marker; for every step, the
    max |logit difference| against the eager model re-run on the whole sequence so far with the dense mask (the
    generated tokens are text, each its own segment; PaliGemma: the suffix, token type 1).
    Returns (generate's output, [max diff per step])."""
    cut = inputs["input_ids"].shape[1] - 3
    gin = prompt(inputs, cut)
    with torch.no_grad():
        g = mma.generate(**gin, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        diffs = []
        for t in range(new_tokens):
            full = extend(name, gin, g.sequences[:, :cut + t])
            n = t
            m = torch.cat([mod[:, :cut], torch.zeros(mod.shape[0], n, dtype=torch.long)], 1)
            s = torch.cat([seg[:, :cut], seg[:, :cut].max() + 1 + torch.arange(n).expand(seg.shape[0], n)], 1)
            ref = eager_with_dense(eager, full, reference_masks(name, full, m, s)).logits[:, -1]
            diffs.append((g.logits[t] - ref).abs().max().item())
    return g, diffs


def extend(name, gin, sequences):
    """The prompt inputs `gin` continued by generated tokens (``sequences`` holds prompt + tokens so far)."""
    B, n = sequences.shape[0], sequences.shape[1] - gin["input_ids"].shape[1]
    out = dict(gin, input_ids=sequences)
    grow = {"attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 1 if name == "paligemma" else 0}
    for k, fill in grow.items():
        if k in gin:
            out[k] = torch.cat([gin[k], gin[k].new_full((B, n), fill)], 1)
    return out


def prompt(inputs, cut):
    """The first `cut` positions of the per-token inputs (a generation prompt)."""
    per_token = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
    return {k: (v[:, :cut] if k in per_token else v) for k, v in inputs.items()}


def _subs(cfg):
    from mma_kernels.integrations.families import sub_configs

    return list(sub_configs(cfg))


def main(argv=None):
    import transformers

    torch.set_num_threads(1)
    names = (argv if argv is not None else sys.argv[1:]) or tv.CLASSES
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, fp32 CPU, {tv.LAYERS} decoder layers")
    cols = ["class", "fwd+bwd", "generate ok", "max logit diff", "generate every-step diff", "vision diff",
            "other sub-models kept", "mma effect"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    rows = []
    for n in names:
        try:
            r = check(n)
        except Exception as e:  # a failing class is a row, not a crash of the table
            r = {"class": n, "fwd+bwd": f"ERROR {type(e).__name__}: {str(e)[:120]}"}
        rows.append(r)
        print("| " + " | ".join(f"{r.get(c, '-'):.1e}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                                for c in cols) + " |", flush=True)
    return rows


if __name__ == "__main__":
    main()
