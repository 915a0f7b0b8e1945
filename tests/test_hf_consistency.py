"""Model consistency with MMA active, per class, in the spirit of transformers' ModelTesterMixin /
GenerationTesterMixin (written here, not imported): batching equivalence under left padding, cache vs no
cache, continuing from a cache, beam search scores, assisted decoding, save/load, gradient checkpointing.

Classes: the twelve VLMs of the README table (tiny random configs, `examples/tiny_vlms.py`) and a text decoder.
"""
import re
import sys
import tempfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import check_vlm_classes as cv  # noqa: E402
import tiny_vlms as tv  # noqa: E402
from test_hf_helpers import (_one_thread, cache_names, disable_checkpointing, enable_checkpointing,  # noqa: E402,F401
                             out_cache)

from mma_kernels import apply_mma  # noqa: E402

TOL = dict(atol=1e-4, rtol=0)
CLASSES = tv.CLASSES + ("qwen2_text",)


def _text_batch():
    """The text decoder's batch, laid out as `cv.batch`: row 0 = 3 text tokens + body, row 1 = 3 pads + body."""
    body = torch.tensor([1, 3] + [tv.IMG] * 4 + [10, 11, 12, cv.ANS, 20, 21, 22])
    ids = torch.stack([torch.cat([torch.tensor([7, 8, 9]), body]), torch.cat([torch.zeros(3, dtype=torch.long), body])])
    att = torch.ones_like(ids)
    att[1, :3] = 0
    return dict(input_ids=ids, attention_mask=att)


def _model(name, patch=True):
    if name == "qwen2_text":
        import transformers

        torch.manual_seed(0)
        cfg = transformers.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
        m = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
        return apply_mma(m, image_token_id=tv.IMG, answer_token_id=cv.ANS) if patch else m
    m = tv.make_model(name, "eager")
    return apply_mma(m, answer_token_id=cv.ANS) if patch else m


def _inputs(name):
    return _text_batch() if name == "qwen2_text" else cv.batch(name)[0]


def _row(inputs, b, name):
    """Row `b` alone, its left padding removed (per-token inputs cut; image inputs of that row)."""
    keep = inputs["attention_mask"][b].bool()
    out = {}
    for k, v in inputs.items():
        if k in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
            out[k] = v[b:b + 1][:, keep]
        elif k == "image_grid_thw" or k == "image_sizes":
            out[k] = v[b:b + 1]
        elif k == "pixel_values":
            n = v.shape[0] // 2  # images (or patches) split evenly between the two rows
            out[k] = v[b * n:(b + 1) * n]
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("name", CLASSES)
def test_consistency(name):
    model = _model(name)
    inputs = _inputs(name)
    valid = inputs["attention_mask"].bool()
    with torch.no_grad():
        full = model(**inputs, use_cache=False).logits
        # cache vs no cache: the same logits
        torch.testing.assert_close(model(**inputs, use_cache=True).logits, full, **TOL)
        # batching equivalence: each row alone (no padding) gives the batch's logits at its valid positions
        for b in range(2):
            alone = model(**_row(inputs, b, name)).logits[0]
            torch.testing.assert_close(alone, full[b][valid[b]], **TOL)
    # beam search: the returned scores are the summed log-probabilities of the tokens, re-scored by a full
    # forward (no cache) of each returned sequence
    cut = inputs["input_ids"].shape[1] - 3
    gin = cv.prompt(inputs, cut)
    with torch.no_grad():
        beams = model.generate(**gin, max_new_tokens=3, min_new_tokens=3, num_beams=2, do_sample=False,
                               length_penalty=0.0, output_scores=True, return_dict_in_generate=True, pad_token_id=0,
                               early_stopping=True)
        seq = beams.sequences
        full_in = cv.extend(name, gin, seq)
        logp = model(**full_in, use_cache=False).logits.log_softmax(-1)
        rescored = logp[:, cut - 1:-1].gather(-1, seq[:, cut:, None])[..., 0].sum(-1)
        torch.testing.assert_close(beams.sequences_scores, rescored, atol=1e-3, rtol=0)
        # assisted decoding with an identical assistant: the same tokens as plain greedy
        greedy = model.generate(**gin, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    pad0 = int((~valid[0]).sum())  # row 0 alone, its padding removed
    _assisted(model, name, cv.prompt(_row(inputs, 0, name), cut - pad0), greedy[:1, pad0:])
    # save / load: the checkpoint loads without mma_kernels' attention (nothing of ours is saved) and, patched
    # again, gives the same logits
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        import json

        saved = Path(d, "config.json").read_text()
        assert '"mma"' not in saved, "the attention implementation must not be saved into config.json"
        json.loads(saved)
        loaded = type(model).from_pretrained(d, attn_implementation="eager").float().eval()
    loaded = apply_mma(loaded, **({"image_token_id": tv.IMG} if name == "qwen2_text" else {}),
                       answer_token_id=cv.ANS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits[valid], full[valid], **TOL)
    # gradient checkpointing: the same loss and gradients
    labels = torch.where(valid, inputs["input_ids"], -100)
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        model(**inputs, labels=labels).loss.backward()
        ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        enable_checkpointing(model)
        model(**inputs, labels=labels).loss.backward()
        got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert got.keys() == ref.keys() and ref
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], atol=1e-6, rtol=1e-5, msg=n)
    finally:
        disable_checkpointing(model)
        model.eval()


def _assisted(model, name, gin, greedy):
    """Assisted decoding (a second patched copy as the assistant; transformers runs it for one row only) gives
    plain greedy's tokens."""
    try:  # what transformers itself allows: an unpatched model with an unpatched assistant
        with torch.no_grad():
            _model(name, patch=False).generate(**gin, max_new_tokens=3, do_sample=False, pad_token_id=0,
                                               assistant_model=_model(name, patch=False))
    except Exception as e:  # e.g. transformers 5.0 cannot crop Gemma 3's sliding-window cache: the same error
        with pytest.raises(type(e), match=re.escape(str(e)[:40])):
            model.generate(**gin, max_new_tokens=3, do_sample=False, pad_token_id=0, assistant_model=_model(name))
        return
    assistant = _model(name)
    with torch.no_grad():
        # (transformers 5.0 refuses min_new_tokens with an assistant: compare against greedy without it)
        plain = model.generate(**gin, max_new_tokens=3, do_sample=False, pad_token_id=0)
        got = model.generate(**gin, max_new_tokens=3, do_sample=False, pad_token_id=0, assistant_model=assistant)
    assert got.tolist() == plain.tolist()
    assert plain.shape[1] < greedy.shape[1] or plain.tolist() == greedy.tolist()


def test_continue_from_cache():
    """Prefill over the prompt with a cache, then the answer tokens over that cache in one forward (ids covering
    the whole sequence): the logits of a full forward."""
    from transformers import DynamicCache

    model = _model("llava")
    inputs, mod, seg, _ = cv.batch("llava")
    cut = inputs["input_ids"].shape[1] - 3
    name = cache_names(model)[0]
    with torch.no_grad():
        full = model(**inputs, modality_ids=mod, segment_ids=seg).logits
        first = model(**cv.prompt(inputs, cut), modality_ids=mod, segment_ids=seg, use_cache=True,
                      **{name: DynamicCache(config=model.config)})
        rest = model(input_ids=inputs["input_ids"][:, cut:], attention_mask=inputs["attention_mask"],
                     modality_ids=mod, segment_ids=seg, use_cache=True, **{name: out_cache(first)}).logits
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(first.logits[valid[:, :cut]], full[:, :cut][valid[:, :cut]], **TOL)
    torch.testing.assert_close(rest[valid[:, cut:]], full[:, cut:][valid[:, cut:]], **TOL)
