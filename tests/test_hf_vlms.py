"""apply_mma on twelve Hugging Face VLM classes (tiny random configs, fp32, 3 decoder layers).

Per class: a batch of 2 rows with left padding, real image placeholders and pixel inputs, ids laid out
by hand (`check_vlm_classes.batch`); the reference is the same weights with eager attention whose
language model gets the dense additive mask written from the rule (`check_vlm_classes.rule_mask`).
"""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import check_vlm_classes as cv  # noqa: E402
import tiny_vlms as tv  # noqa: E402
from test_hf_helpers import _one_thread  # noqa: E402,F401

from mma_kernels import MMADataCollatorWithFlattening, apply_mma  # noqa: E402
from mma_kernels.integrations.families import sub_configs  # noqa: E402

TOL = dict(atol=1e-4, rtol=0)
_PAIRS = {}


def pair(name):
    """(eager reference, patched copy with the same weights), built once per class."""
    if name not in _PAIRS:
        eager = tv.make_model(name, "eager")
        mma = tv.make_model(name, "eager")
        before = {k: c._attn_implementation for k, c in sub_configs(mma.config)}
        apply_mma(mma, answer_token_id=cv.ANS)
        _PAIRS[name] = (eager, mma, before)
    return _PAIRS[name]


@pytest.mark.parametrize("name", tv.CLASSES)
def test_vlm_class(name):
    eager, mma, before = pair(name)
    mma.eval()
    inputs, mod, seg, labels = cv.batch(name)
    # the expected layout, by hand: segment 0 through the answer marker, then one segment per answer token
    assert seg[0].tolist()[-4:] == [0, 1, 2, 3] and mod[1, :3].tolist() == [-1, -1, -1]
    valid = inputs["attention_mask"].bool()
    masks = cv.reference_masks(name, inputs, mod, seg)
    # only the language model runs "mma"; every other sub-model keeps its implementation
    text = mma.config.get_text_config()
    for k, c in sub_configs(mma.config):
        assert c._attn_implementation == ("mma" if c is text else before[k]), k
    # nothing the package adds to the kwargs reaches any module outside the language model
    lm = cv.language_model(mma)
    inside = {id(m) for m in lm.modules()}
    seen = set()
    hooks = [m.register_forward_pre_hook(lambda mod, a, kw: seen.update(kw), with_kwargs=True)
             for m in mma.modules() if id(m) not in inside and m is not mma]
    with torch.no_grad():
        mma(**inputs)
    for h in hooks:
        h.remove()
    assert not seen & {"modality_ids", "segment_ids", "document_ids", "group_ids", "mma_mask", "mma_backend"}
    with torch.no_grad():
        # vision tower untouched: the image features are exactly the native model's
        assert torch.equal(cv.image_features(mma, inputs), cv.image_features(eager, inputs))
        ref = cv.eager_with_dense(eager, inputs, masks, labels=labels)
        got = mma(**inputs, labels=labels)
        torch.testing.assert_close(got.logits[valid], ref.logits[valid], **TOL)
        torch.testing.assert_close(got.loss, ref.loss, atol=1e-5, rtol=0)
        # MMA visibly active at image positions: plain causal attention gives other logits there (PaliGemma's
        # prefix already covers MMA's look-ahead, so compare without its token_type_ids)
        plain = {k: v for k, v in inputs.items() if not (name == "paligemma" and k == "token_type_ids")}
        mma_logits = mma(**plain).logits
        causal = mma(**plain, modality_ids=torch.zeros_like(mod)).logits
        assert (mma_logits[mod == 1] - causal[mod == 1]).abs().max() > 1e-3
    # forward with labels + backward (training mode: labels give the segments)
    mma.train()
    loss = mma(**inputs, labels=labels).loss
    loss.backward()
    grads = {n: p.grad for n, p in mma.named_parameters() if p.grad is not None}
    assert any("embed" in n or "lm_head" in n for n in grads) and all(torch.isfinite(g).all() for g in grads.values())
    mma.zero_grad(set_to_none=True)
    mma.eval()
    # generate (batched, left-padded, greedy): every step's logits vs the eager model re-run on the whole
    # sequence so far with the dense mask
    g, diffs = cv.generate_step_diffs(name, eager, mma, inputs, mod, seg, new_tokens=3)
    assert g.sequences.shape == (2, inputs["input_ids"].shape[1])
    assert max(diffs) < TOL["atol"], (name, diffs)


def test_packed_mrope_rows_equal_per_sample_runs():
    """Qwen2-VL: two samples with images packed into one row (per-sample 3D M-RoPE positions kept)."""
    eager, mma, _ = pair("qwen2_vl")
    mma.eval()
    feats, singles = [], []
    # each image follows <|vision_start|> (118 in the tiny config), as the processor writes it: transformers 5.0
    # finds images for M-RoPE by that marker (later releases by mm_token_type_ids)
    for n, (pre, post) in enumerate((([1, 118], [10, 11, cv.ANS, 20, 21]), ([118], [12, cv.ANS, 22, 23, 24, 25]))):
        pix, per = tv.pixel_inputs("qwen2_vl", 1, seed=n)
        ids = torch.tensor([pre + [tv.IMG] * per + post])
        mm = dict(mm_token_type_ids=(ids == tv.IMG).long()) if cv.takes_mm_token_types() else {}
        pos, _ = mma.model.get_rope_index(ids, image_grid_thw=pix["image_grid_thw"], **mm)
        with torch.no_grad():
            singles.append(mma(input_ids=ids, **mm, **pix).logits[0])
        labels = torch.where(torch.arange(ids.shape[1]) > (ids[0] == cv.ANS).nonzero()[0, 0], ids[0], -100)
        feats.append({"input_ids": ids[0], "labels": labels, "position_ids": pos[:, 0], **pix})
    assert pos.shape[0] == 3 and not torch.equal(pos[0], pos[1])  # real M-RoPE: rows differ at the image
    batch = MMADataCollatorWithFlattening(image_token_id=tv.IMG, answer_token_id=cv.ANS,
                                          extra_keys=("pixel_values", "image_grid_thw"))(feats)
    assert batch["position_ids"].shape == (3, 1, sum(len(f["input_ids"]) for f in feats))
    assert batch["document_ids"].tolist() == [[0] * 11 + [1] * 11]
    with torch.no_grad():
        packed = mma(**batch).logits[0]
        # documents inferred from the 3D positions when document_ids are not given
        no_doc = mma(**{k: v for k, v in batch.items() if k not in ("document_ids",)}).logits[0]
        # only document_ids: the segments derived from input_ids are cut at the document boundary
        only_doc = mma(**{k: v for k, v in batch.items() if k not in ("modality_ids", "segment_ids")}).logits[0]
    want = torch.cat(singles)
    for got in (packed, no_doc, only_doc):
        torch.testing.assert_close(got, want, **TOL)
    # the collator's default 2D positions would flatten M-RoPE at the images: they only mark the documents, the
    # model computes its own 3D positions over the row (per document: the sample's own, shifted by a constant)
    flat = MMADataCollatorWithFlattening(image_token_id=tv.IMG, answer_token_id=cv.ANS,
                                         extra_keys=("pixel_values", "image_grid_thw"))(
        [{k: v for k, v in f.items() if k != "position_ids"} for f in feats])
    assert flat["position_ids"].dim() == 2
    if mm:  # transformers after 5.0 finds the images for M-RoPE by the processor's mm_token_type_ids
        flat["mm_token_type_ids"] = (flat["input_ids"] == tv.IMG).long()
    with torch.no_grad():
        torch.testing.assert_close(mma(**flat).logits[0], want, **TOL)


# -------------------------------------------------------------------------------------------- rejections
def test_no_silent_fallbacks():
    eager, mma, _ = pair("llava")
    inputs, mod, seg, labels = cv.batch("llava")
    dense = torch.zeros(2, 1, mod.shape[1], mod.shape[1])
    with pytest.raises(ValueError, match=r"after apply_mma the mask is built from per-token ids; got a 4D mask"):
        mma(**{**inputs, "attention_mask": dense})
    emb = mma.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(ValueError, match=r"inputs_embeds without input_ids: image positions cannot be found\. "
                                         r"Pass modality_ids"):
        mma(inputs_embeds=emb, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"])
    # explicit ids make inputs_embeds fine (images already spliced in by the caller)
    with torch.no_grad():
        mma(inputs_embeds=emb, attention_mask=inputs["attention_mask"], modality_ids=mod.clamp(min=0), segment_ids=seg)
    # training with images and no way to find the answers: labels missing, no answer/turn token
    _, fresh, _ = pair("idefics3")
    apply_mma(fresh)  # re-apply without the answer marker
    fresh.train()
    try:
        inp, *_ = cv.batch("idefics3")
        with pytest.raises(ValueError, match=r"training on a batch with images, but no way to find where answers start"):
            fresh(**inp)
    finally:
        apply_mma(fresh, answer_token_id=cv.ANS)
        fresh.eval()
    with pytest.raises(ValueError, match=r"image_token_id=500 is outside the vocabulary \(0\.\.127\)"):
        apply_mma(tv.make_model("llava"), image_token_id=500)


def test_text_only_batch_is_plain_causal():
    eager, mma, _ = pair("llava")
    ids = torch.tensor([[1, 3, 10, 11, 12, cv.ANS, 20, 21]])
    with torch.no_grad():
        torch.testing.assert_close(mma(input_ids=ids).logits, eager(input_ids=ids).logits, **TOL)


def test_string_mma_on_a_vlm_refuses_the_vision_tower_and_missing_ids():
    import transformers

    from mma_kernels.integrations import transformers as glue

    m = transformers.AutoModelForImageTextToText.from_config(tv.make_config("llava"), attn_implementation="mma")
    inputs, *_ = cv.batch("llava")
    with pytest.raises(ValueError, match=r"is bidirectional \(is_causal=False, e\.g\. a vision tower\)"):
        m(**inputs)
    m.set_attn_implementation({"vision_config": "eager"})
    with pytest.raises(ValueError, match=r"no modality ids for this forward pass\. Call mma_kernels\.apply_mma"):
        m(**inputs)
    # the registered attention function: dense masks it did not build, key counts that do not match
    layer = m.model.language_model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 16)
    kv = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match=r"got a 4D mask it did not build"):
        glue.mma_attention_forward(layer, q, kv, kv, torch.zeros(1, 1, 5, 5))
    spec = glue.MMAMaskSpec(1, 5, 5, None)
    spec.mask = glue.build_mma_mask(7, torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"layer LlamaAttention \(llama\) has 5 keys but the mask covers 7 positions"):
        glue.mma_attention_forward(layer, q, kv, kv, spec)


def test_unsupported_features_named_per_sub_config():
    cfg = tv.make_config("llava")
    cfg.text_config.attn_logit_softcapping = 50.0
    import transformers

    m = transformers.AutoModelForImageTextToText.from_config(cfg)
    with pytest.raises(ValueError, match=r"softcapping .* sub-model 'text_config' \(llama\) of "
                                         r"LlavaForConditionalGeneration"):
        apply_mma(m)


@pytest.mark.parametrize("name", ["gemma3", "paligemma"])
def test_own_rule_is_kept(name):
    """The model's own rule (token_type_ids) is part of the result: without it the logits differ."""
    _, mma, _ = pair(name)
    inputs, *_ = cv.batch(name)
    own = cv.own_rule(name, inputs)
    assert own.sum() > 0
    with torch.no_grad():
        with_rule = mma(**inputs).logits
        without = mma(**{k: v for k, v in inputs.items() if k != "token_type_ids"}).logits
    rows = own.any(-1) & inputs["attention_mask"].bool()
    assert (with_rule[rows] - without[rows]).abs().max() > 1e-3


def test_defaults_from_config_and_tokenizer_and_positional_input_ids():
    _, q, _ = pair("qwen2_vl")
    assert q._mma_config["image_token_id"] == (tv.IMG, tv.VID)  # image and video placeholders from the config

    class Tok:  # what apply_mma asks a tokenizer: the family's turn marker
        unk_token_id = 0

        def convert_tokens_to_ids(self, tok):
            return {"<|im_start|>": 117}.get(tok, 0)

    m = apply_mma(tv.make_model("internvl"), tokenizer=Tok())
    assert m._mma_config["turn_token_id"] == 117 and m._mma_config["answer_token_id"] is None
    # keyword-only wrapper: input_ids by position, everything else by name (LLaVA's 2nd parameter is pixel_values)
    eager, mma, _ = pair("llava")
    inputs, *_ = cv.batch("llava")
    with torch.no_grad():
        a = mma(inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"])
        b = mma(**inputs)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    with pytest.raises(TypeError, match=r"got multiple values for argument 'input_ids'"):
        mma(inputs["input_ids"], input_ids=inputs["input_ids"])


def test_documents_from_mrope_positions():
    from mma_kernels.integrations.ids import _documents_from_positions

    # 3D [3, B, L]: two samples, each starting at (0, 0, 0); the image (t constant, h/w vary) is not a restart
    t = [0, 1, 2, 2, 2, 2, 4, 0, 1, 1, 1, 1, 3]
    h = [0, 1, 2, 2, 3, 3, 4, 0, 1, 1, 2, 2, 3]
    w = [0, 1, 2, 3, 2, 3, 4, 0, 1, 2, 1, 2, 3]
    pos = torch.tensor([[t], [h], [w]])
    assert _documents_from_positions(pos).tolist() == [[0] * 7 + [1] * 6]
    # 4D-style [4, B, L]: row 0 is the plain text position
    text = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    pos4 = torch.stack([text, text * 0, text * 0, text * 0])
    assert _documents_from_positions(pos4).tolist() == [[0, 0, 0, 0, 1, 1, 1]]
