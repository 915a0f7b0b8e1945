"""Every model head a user trains with MMA: base models (no generate), sequence/token classification (their
labels untouched by the segment logic), a meta-device init, output_attentions, and the checks at apply_mma
(head dim, transformers version)."""
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import check_vlm_classes as cv  # noqa: E402
import tiny_vlms as tv  # noqa: E402
from test_hf_helpers import _one_thread, additive, dense_allowed  # noqa: E402,F401

from mma_kernels import apply_mma  # noqa: E402

IMG, ANS = 5, 6
TOL = dict(atol=1e-4, rtol=0)


def _cfg(**over):
    from transformers import LlamaConfig

    kw = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, pad_token_id=0, num_labels=3)
    kw.update(over)
    return LlamaConfig(**kw)


def _pair(cls, **over):
    torch.manual_seed(0)
    eager = cls(_cfg(**over)).eval()
    eager.set_attn_implementation("eager")
    mma = cls(_cfg(**over)).eval()
    mma.load_state_dict(eager.state_dict())
    return eager, apply_mma(mma, image_token_id=IMG, answer_token_id=ANS)


def _row():
    """ids [1, 10] with a 3-token image, a question and the answer marker; the ids by hand."""
    ids = torch.tensor([[1, 2, IMG, IMG, IMG, 20, 21, ANS, 30, 31]])
    mod = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0, 0, 0]])
    seg = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 1, 2]])  # through the marker, then one per token
    return ids, mod, seg


def test_base_model_has_no_generate_and_matches_the_rule():
    from transformers import LlamaModel

    eager, mma = _pair(LlamaModel)
    assert not hasattr(mma, "generate")
    ids, mod, seg = _row()
    with torch.no_grad():
        got = mma(ids).last_hidden_state
        ref = eager(ids, attention_mask=additive(dense_allowed(mod, seg))).last_hidden_state
    torch.testing.assert_close(got, ref, **TOL)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_vlm_base_model(name):
    """LlavaModel / Qwen2VLModel (no LM head, no generate) patched directly: same hidden states as the patched
    full model's base."""
    full = tv.make_model(name, "eager")
    base = tv.make_model(name, "eager").model
    apply_mma(full, answer_token_id=cv.ANS)
    apply_mma(base, answer_token_id=cv.ANS)
    assert not hasattr(base, "generate")
    inputs, mod, seg, _ = cv.batch(name)
    with torch.no_grad():
        want = full(**inputs, output_hidden_states=True).hidden_states[-1]
        got = base(**inputs).last_hidden_state
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[valid], want[valid], **TOL)


@pytest.mark.parametrize("labels", ["class", "regression", "multi_label"])
def test_sequence_classification_labels_untouched(labels):
    from transformers import LlamaForSequenceClassification

    kind = {"class": "single_label_classification", "regression": "regression",
            "multi_label": "multi_label_classification"}[labels]
    eager, mma = _pair(LlamaForSequenceClassification, problem_type=kind, num_labels=1 if labels == "regression" else 3)
    ids, mod, seg = _row()
    y = {"class": torch.tensor([2]), "regression": torch.tensor([0.5]),
         "multi_label": torch.tensor([[1.0, 0.0, 1.0]])}[labels]
    mma.train()
    out = mma(ids, labels=y)  # the wrapper must not read class labels as LM labels
    out.loss.backward()
    assert torch.isfinite(out.loss)
    mma.eval()
    with torch.no_grad():
        ref = eager(ids, attention_mask=additive(dense_allowed(mod, seg)), labels=y)
        got = mma(ids, labels=y)
    torch.testing.assert_close(got.logits, ref.logits, **TOL)
    torch.testing.assert_close(got.loss, ref.loss, **TOL)


def test_token_classification_labels_untouched():
    """Per-token class labels with -100 holes have the shape of LM labels; they must not cut segments."""
    from transformers import LlamaForTokenClassification

    eager, mma = _pair(LlamaForTokenClassification)
    ids, mod, seg = _row()
    y = torch.tensor([[0, 1, -100, -100, 2, 1, 0, -100, 1, 2]])
    with torch.no_grad():
        ref = eager(ids, attention_mask=additive(dense_allowed(mod, seg)), labels=y)
        got = mma(ids, labels=y)
    torch.testing.assert_close(got.logits, ref.logits, **TOL)
    torch.testing.assert_close(got.loss, ref.loss, **TOL)


def test_meta_device_init():
    """Built under a meta default device (from_pretrained's init, FSDP meta init), weights loaded later."""
    from transformers import LlamaForCausalLM

    eager, ref = _pair(LlamaForCausalLM)
    with torch.device("meta"):
        model = LlamaForCausalLM(_cfg())
        apply_mma(model, image_token_id=IMG, answer_token_id=ANS)
    model.to_empty(device="cpu")
    model.load_state_dict(ref.state_dict())
    bufs = dict(ref.named_buffers())  # non-persistent buffers (RoPE inv_freq) are re-made as from_pretrained does
    for n, b in model.named_buffers():
        b.copy_(bufs[n])
    model.eval()
    ids, _, _ = _row()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=0, rtol=0)


def test_output_attentions_are_the_rule_probabilities():
    from transformers import LlamaForCausalLM

    eager, mma = _pair(LlamaForCausalLM)
    ids, mod, seg = _row()
    with torch.no_grad():
        got = mma(ids, output_attentions=True)
        ref = eager(ids, attention_mask=additive(dense_allowed(mod, seg)), output_attentions=True)
        plain = mma(ids)
    assert len(got.attentions) == 2 and got.attentions[0].shape == (1, 4, 10, 10)
    for a, b in zip(got.attentions, ref.attentions):
        torch.testing.assert_close(a, b, **TOL)
    allowed = dense_allowed(mod, seg)[:, None].expand_as(got.attentions[0])
    assert bool((got.attentions[0][~allowed] == 0).all())  # an image token sees the question after it
    assert float(got.attentions[0][0, 0, 2, 5]) > 0
    torch.testing.assert_close(got.logits, plain.logits, atol=0, rtol=0)  # the flag changes no output
    assert plain.attentions is None or plain.attentions == ()


def test_head_dim_checked_at_apply_mma():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_cfg(hidden_size=32, num_attention_heads=4, num_key_value_heads=2))  # head dim 8
    with pytest.raises(ValueError, match=r"head dim 8 is out of the kernel's range 16\.\.256"):
        apply_mma(model, image_token_id=IMG)


def test_transformers_version_range():
    import transformers

    from mma_kernels.integrations import transformers as glue

    lo, hi = glue.TESTED_TRANSFORMERS
    assert glue._version_tuple(lo) <= glue._version_tuple(transformers.__version__)
    with pytest.raises(RuntimeError, match=r"transformers 4\.57\.6 is older than the oldest supported release"):
        glue.check_transformers_version("4.57.6")
    glue._warned_newer = False
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        glue.check_transformers_version(hi)  # the newest tested: silent
        glue.check_transformers_version("99.1.0.dev0")
        glue.check_transformers_version("99.2.0")  # once only
    newer = [w for w in seen if "newer than the releases" in str(w.message)]
    assert len(newer) == 1 and f"{lo} .. {hi}" in str(newer[0].message)
    glue._warned_newer = False
