"""Packing through transformers' own `DataCollatorWithFlattening` (restarting position_ids, no explicit ids).

A packed row must give what its samples give one by one: logits, the loss (summed over supervised tokens)
and every parameter gradient, for a text decoder, Llava and Qwen2-VL (M-RoPE: the collator's 2D positions
only mark the documents; the model computes its own 3D positions over the row).
"""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import check_vlm_classes as cv  # noqa: E402
import tiny_vlms as tv  # noqa: E402
from test_hf_helpers import _one_thread, model_pair  # noqa: E402,F401

from mma_kernels import apply_mma  # noqa: E402

IMG, ANS = 5, 6


def _sum_loss(logits, labels):
    """Cross-entropy summed over the supervised tokens of one row (labels shifted as in HF)."""
    return F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(model, samples, extra=None, per_sample_extra=None, tol=2e-5):
    """samples: HF features ({"input_ids", "labels"}); extra(batch): image kwargs for the packed row;
    per_sample_extra(i): those of sample i alone."""
    from transformers import DataCollatorWithFlattening

    model.eval()  # no dropout; gradients still flow
    batch = DataCollatorWithFlattening(return_tensors="pt")(samples)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # nothing of ours: the collator as users run it
    lens = [len(s["input_ids"]) for s in samples]
    model.zero_grad(set_to_none=True)
    out = model(**batch, **(extra or {}))
    n_sup = int((batch["labels"][0, 1:] != -100).sum())
    torch.testing.assert_close(out.loss * n_sup, _sum_loss(out.logits, batch["labels"]), atol=1e-4, rtol=1e-5)
    (out.loss * n_sup).backward()
    packed_grads = _grads(model)
    packed_logits = out.logits[0].detach()
    model.zero_grad(set_to_none=True)
    singles, total = [], 0.0
    for i, s in enumerate(samples):
        ids = torch.tensor([s["input_ids"]])
        labels = torch.tensor([[-100] + s["labels"][1:]])  # the collator's separator: no label on a first token
        o = model(input_ids=ids, labels=labels, **(per_sample_extra(i) if per_sample_extra else {}))
        loss = _sum_loss(o.logits, labels)
        loss.backward()
        total = total + loss.detach()
        singles.append(o.logits[0].detach())
    single_grads = _grads(model)
    torch.testing.assert_close(packed_logits, torch.cat(singles), atol=tol, rtol=0)
    torch.testing.assert_close(out.loss.detach() * n_sup, total, atol=1e-4, rtol=1e-5)
    assert packed_grads.keys() == single_grads.keys()
    for n in packed_grads:
        torch.testing.assert_close(packed_grads[n], single_grads[n], atol=tol, rtol=1e-4, msg=n)
    assert sum(lens) == packed_logits.shape[0]


def test_issue_repro_text_decoder():
    """The issue's repro: a Llama patched with image/answer tokens, two samples packed by transformers."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    m = apply_mma(AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)), image_token_id=5, answer_token_id=6)
    samples = [{"input_ids": [1, 5, 5, 7, 6, 9, 9], "labels": [-100] * 5 + [9, 9]},
               {"input_ids": [1, 5, 8, 6, 4], "labels": [-100] * 4 + [4]}]
    _compare(m, samples)


@pytest.mark.parametrize("with_labels", [True, False])
def test_text_decoder_three_samples(with_labels):
    """Images, a caption sample with no answer marker (its images must see nothing ahead, as alone), answers."""
    _, m = model_pair("qwen2")
    apply_mma(m, image_token_id=IMG, answer_token_id=ANS)
    g = torch.Generator().manual_seed(1)
    samples = []
    for L, img, ans in ((12, 2, 8), (9, 1, None), (15, 3, 11)):
        ids = torch.randint(10, 90, (L,), generator=g)
        ids[img:img + 3] = IMG
        if ans is not None:
            ids[ans] = ANS
        labels = ids.clone()
        labels[:(ans + 1 if ans is not None else img + 3)] = -100
        samples.append({"input_ids": ids.tolist(), "labels": labels.tolist() if with_labels else [-100] * L})
    if with_labels:
        _compare(m, samples)
    else:  # no supervised token: compare logits only (no loss to backpropagate)
        from transformers import DataCollatorWithFlattening

        b = DataCollatorWithFlattening(return_tensors="pt")(samples)
        b.pop("labels")
        with torch.no_grad():
            packed = m(**b).logits[0]
            singles = [m(input_ids=torch.tensor([s["input_ids"]])).logits[0] for s in samples]
        torch.testing.assert_close(packed, torch.cat(singles), atol=2e-5, rtol=0)


def test_flash_attn_kwargs_and_seq_idx_are_documents_too():
    """`return_flash_attn_kwargs=True` (cu_seq_lens) without position ids: the documents come from cu_seq_lens."""
    from transformers import DataCollatorWithFlattening

    _, m = model_pair("llama")
    apply_mma(m, image_token_id=IMG, answer_token_id=ANS)
    samples = [{"input_ids": [1, 5, 5, 7, 6, 9, 9], "labels": [-100] * 5 + [9, 9]},
               {"input_ids": [1, 5, 8, 6, 4], "labels": [-100] * 4 + [4]}]
    b = DataCollatorWithFlattening(return_tensors="pt", return_flash_attn_kwargs=True, return_position_ids=False)(samples)
    assert "position_ids" not in b and "cu_seq_lens_q" in b
    with torch.no_grad():
        packed = m(input_ids=b["input_ids"], cu_seq_lens_q=b["cu_seq_lens_q"]).logits[0]
        # positions restart per sample in the separate runs; give the packed row the same positions
        pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]])
        packed_pos = m(input_ids=b["input_ids"], position_ids=pos, cu_seq_lens_q=b["cu_seq_lens_q"]).logits[0]
        singles = torch.cat([m(input_ids=torch.tensor([s["input_ids"]])).logits[0] for s in samples])
    torch.testing.assert_close(packed_pos, singles, atol=2e-5, rtol=0)
    # without positions the second sample's RoPE positions continue (7..11): only the mask is per document,
    # so the first sample (positions 0..6 in both) matches exactly
    torch.testing.assert_close(packed[:7], singles[:7], atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_vlm_packed_by_transformers_collator(name):
    """Llava (1D RoPE) and Qwen2-VL (M-RoPE) samples with an image each, packed by DataCollatorWithFlattening;
    the image inputs are concatenated beside it in sample order (what a VLM training loop adds)."""
    model = tv.make_model(name, "eager")
    apply_mma(model, answer_token_id=cv.ANS)
    samples, pix = [], []
    for n, (pre, post) in enumerate((([1, 118], [10, 11, cv.ANS, 20, 21]), ([118], [12, 13, cv.ANS, 22, 23, 24]))):
        p, per = tv.pixel_inputs(name, 1, seed=n)
        ids = pre + [tv.IMG] * per + post
        a = ids.index(cv.ANS)
        samples.append({"input_ids": ids, "labels": [-100] * (a + 1) + ids[a + 1:]})
        pix.append(p)
    mm = cv.takes_mm_token_types() and name == "qwen2_vl"

    def with_types(kw, ids):
        return {**kw, "mm_token_type_ids": (torch.tensor([ids]) == tv.IMG).long()} if mm else kw

    packed_ids = sum((s["input_ids"] for s in samples), [])
    extra = with_types({k: torch.cat([p[k] for p in pix]) for k in pix[0]}, packed_ids)
    _compare(model, samples, extra=extra, per_sample_extra=lambda i: with_types(pix[i], samples[i]["input_ids"]),
             tol=5e-5)
