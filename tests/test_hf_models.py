"""attn_implementation="mma" / apply_mma on tiny random Llama, Mistral, Qwen2, Qwen3, Phi3 vs eager + dense mask.

Tolerances (fp32 everywhere): logits atol 2e-5 / rtol 1e-4, parameter gradients atol 2e-5 / rtol 1e-4,
losses over a 3-step AdamW run rtol 1e-5. Eager and MMA differ only in summation order (fp32 ulp
level, ~1e-7 relative per op), amplified through 2 layers and an lm head over 96 classes.
"""
import pytest
import torch

from test_hf_helpers import (_one_thread, MODELS, additive, dense_allowed, enable_checkpointing, model_pair,
                             multimodal_batch, tiny_config,
                             transformers)

import mma_kernels
from mma_kernels import apply_mma, mma_ids_from_input_ids

IMG, ANS = 5, 6
TOL = dict(atol=2e-5, rtol=1e-4)


def _inputs(L):
    """multimodal_batch rows (left padding p: [pad]*p, 2 text, 5 x <image>, 4 text, <|assistant|>, answer) and the
    expected ids written by hand: segment 0 runs through <|assistant|>, each answer token is its own segment."""
    ids, att = multimodal_batch(L=L, image_token=IMG, answer_token=ANS)
    mod = torch.full_like(ids, -1)
    seg = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for b, p in enumerate((0, 3)):
        mod[b, p:] = 0
        mod[b, p + 2:p + 7] = 1
        a = p + 11  # <|assistant|>
        assert ids[b, a] == ANS and (ids[b, p + 2:p + 7] == IMG).all()
        seg[b, a + 1:] = torch.arange(1, L - a)
        labels[b, a + 1:] = ids[b, a + 1:]  # supervised: the answer only
    pos = (att.cumsum(1) - 1).clamp(min=0)
    return ids, att, mod, seg, pos, labels


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# the Triton interpreter is slow on CPU: two models (head dims 16 and 96) cover its HF path in CI
@pytest.mark.parametrize("name,backend", [(n, "torch") for n in MODELS] + [("llama", "triton"), ("phi3", "triton")])
def test_logits_and_grads_match_eager_dense(name, backend):
    eager, mma = model_pair(name)
    apply_mma(mma, image_token_id=IMG, answer_token_id=ANS, backend=backend)
    ids, att, mod, seg, pos, labels = _inputs(16 if backend == "triton" else 24)
    ref = eager(ids, attention_mask=additive(dense_allowed(mod, seg)), position_ids=pos, labels=labels)
    out = mma(ids, attention_mask=att, position_ids=pos, labels=labels)  # ids derived from input_ids
    valid = att.bool()
    torch.testing.assert_close(out.logits[valid], ref.logits[valid], **TOL)
    ref.loss.backward()
    out.loss.backward()
    g_ref, g = _grads(eager), _grads(mma)
    assert g.keys() == g_ref.keys() and len(g) > 10
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n], **TOL, msg=lambda m: f"{name} {n}: {m}")


@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_from_config_explicit_ids_and_inputs_embeds(name):
    """attn_implementation='mma' without apply_mma: ids as model kwargs, with input_ids or inputs_embeds."""
    eager, mma = model_pair(name)
    assert mma.config._attn_implementation == "mma"
    ids, att, mod, seg, pos, labels = _inputs(20)
    doc = torch.zeros_like(mod)
    ref = eager(ids, attention_mask=additive(dense_allowed(mod, seg, doc)), position_ids=pos).logits
    emb = mma.get_input_embeddings()(ids)
    out1 = mma(ids, attention_mask=att, position_ids=pos, modality_ids=mod, segment_ids=seg, document_ids=doc).logits
    out2 = mma(inputs_embeds=emb, attention_mask=att, position_ids=pos, modality_ids=mod, segment_ids=seg).logits
    valid = att.bool()
    torch.testing.assert_close(out1[valid], ref[valid], **TOL)
    torch.testing.assert_close(out2[valid], ref[valid], **TOL)
    # the patched model takes inputs_embeds + explicit ids too (the AKI model's path)
    apply_mma(mma)
    out3 = mma(inputs_embeds=emb, attention_mask=att, position_ids=pos, modality_ids=mod, segment_ids=seg).logits
    torch.testing.assert_close(out3[valid], ref[valid], **TOL)


def test_ids_change_the_output():
    """Guard against a silently causal implementation: MMA ids must differ from plain causal."""
    _, mma = model_pair("llama")
    ids, att, mod, seg, pos, _ = _inputs(20)
    a = mma(ids, attention_mask=att, modality_ids=mod, segment_ids=seg).logits
    b = mma(ids, attention_mask=att, modality_ids=torch.zeros_like(mod)).logits  # all text: causal
    img = mod == 1
    assert (a[img] - b[img]).abs().max() > 1e-3
    txt_before = img.long().cumsum(1) == 0  # text before the images: identical
    torch.testing.assert_close(a[txt_before & att.bool()], b[txt_before & att.bool()], **TOL)


@pytest.mark.parametrize("patched", [True, False])
def test_mask_built_once_per_forward(monkeypatch, patched):
    from mma_kernels.integrations import transformers as glue

    calls = []
    real = glue.build_mma_mask
    monkeypatch.setattr(glue, "build_mma_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, mma = model_pair("llama", num_hidden_layers=3)
    ids, att, mod, seg, pos, _ = _inputs(16)
    if patched:
        apply_mma(mma)
    mma(ids, attention_mask=att, modality_ids=mod, segment_ids=seg)
    assert len(calls) == 1


@pytest.mark.parametrize("name", MODELS)
def test_training_curve_and_gradient_checkpointing(name):
    eager, mma = model_pair(name)
    apply_mma(mma, image_token_id=IMG)  # no answer marker: segments from labels (answer-only supervision)
    enable_checkpointing(mma)
    eager.train(), mma.train()
    ids, att, mod, seg, pos, labels = _inputs(24)
    dense = additive(dense_allowed(mod, seg))
    opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-3)
    opt_m = torch.optim.AdamW(mma.parameters(), lr=1e-3)
    le, lm = [], []
    for _ in range(3):
        for model, opt, kw, log in ((eager, opt_e, dict(attention_mask=dense), le),
                                    (mma, opt_m, dict(attention_mask=att), lm)):
            opt.zero_grad()
            loss = model(ids, position_ids=pos, labels=labels, **kw).loss
            loss.backward()
            opt.step()
            log.append(loss.item())
    assert le[-1] < le[0]  # it trains
    torch.testing.assert_close(torch.tensor(lm), torch.tensor(le), rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------------------- rejections
def test_sliding_window_shorter_than_sequence_matches_eager_dense():
    """Mistral, window 8 < 24 tokens: the causal part is cut at the window, look-ahead is not (the contract)."""
    eager, mma = model_pair("mistral", sliding_window=8)
    apply_mma(mma, image_token_id=IMG, answer_token_id=ANS)
    ids, att, mod, seg, pos, labels = _inputs(24)
    ref = eager(ids, attention_mask=additive(dense_allowed(mod, seg, window=8)), position_ids=pos).logits
    out = mma(ids, attention_mask=att, position_ids=pos).logits
    valid = att.bool()
    torch.testing.assert_close(out[valid], ref[valid], **TOL)
    no_window = eager(ids, attention_mask=additive(dense_allowed(mod, seg)), position_ids=pos).logits
    assert (no_window[valid] - ref[valid]).abs().max() > 1e-3  # the window matters at this length


def test_dropout_in_training_is_rejected():
    _, mma = model_pair("qwen2", attention_dropout=0.1)
    ids, att, mod, seg, pos, _ = _inputs(16)
    mma.eval()
    mma(ids, modality_ids=mod.clamp(min=0))  # dropout is off in eval
    mma.train()
    with pytest.raises(ValueError, match=r"attention dropout \(dropout=0.1\).*qwen2"):
        mma(ids, modality_ids=mod.clamp(min=0))


def test_softcapping_is_rejected():
    cfg = transformers.Gemma2Config(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(ValueError, match=r"softcapping.*gemma2"):
        apply_mma(model)


def test_dense_4d_mask_and_bad_args_are_rejected():
    eager, mma = model_pair("llama")
    ids, att, mod, seg, pos, _ = _inputs(16)
    with pytest.raises(ValueError, match="4D"):
        mma(ids, attention_mask=additive(dense_allowed(mod, seg)), modality_ids=mod)
    apply_mma(mma)
    with pytest.raises(ValueError, match="modality_ids: batch size"):
        mma(ids, modality_ids=mod[:1])
    with pytest.raises(ValueError, match="segment_ids: expected shape"):
        mma(ids, modality_ids=mod, segment_ids=seg[:, :5])
    with pytest.raises(ValueError, match="policy"):
        apply_mma(mma, policy="nope")
    with pytest.raises(TypeError, match="model"):
        apply_mma(torch.nn.Linear(2, 2))


def test_static_cache_is_rejected():
    _, mma = model_pair("llama")
    apply_mma(mma)
    ids = torch.randint(10, 90, (1, 8))
    with pytest.raises(ValueError, match="StaticCache"):
        mma.generate(ids, max_new_tokens=2, do_sample=False, cache_implementation="static")


# ------------------------------------------------------------------------------------- ids helper
def test_ids_from_input_ids_aki_layout():
    """The worked AKI example from the contract: system, 144 image tokens, question, <|assistant|>, answer."""
    IMGT, ASST = 32000, 32001
    ids = torch.full((1, 180), 7)
    ids[0, 10:154] = IMGT
    ids[0, 171] = ASST
    mod, seg = mma_ids_from_input_ids(ids, IMGT, ASST)
    assert mod[0, 10:154].eq(1).all() and mod[0, :10].eq(0).all() and mod[0, 154:].eq(0).all()
    # <|assistant|> (171) closes the user segment; the answer after it has no look-ahead
    tail = seg[0, 172:].tolist()
    assert seg[0, :172].eq(0).all() and len(set(tail)) == len(tail) == 8 and min(tail) > 0
    allowed = mma_kernels.MMAMask(mod, seg).to_dense()[0]
    assert allowed[10, 154:172].all() and not allowed[10, 172:].any() and not allowed[10, 11]
    # padding and multi-turn
    ids2 = torch.tensor([[0, 0, 9, IMGT, IMGT, 9, ASST, 9, 3, IMGT, 9, ASST, 9]])
    att = (ids2 != 0).long()
    mod, seg = mma_ids_from_input_ids(ids2, [IMGT], ASST, attention_mask=att, turn_token_id=3)
    assert mod.tolist() == [[-1, -1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0]]
    assert seg[:, :12].tolist() == [[0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2]] and seg[0, 12] > 2
    # no answer marker at all (a caption): no look-ahead
    mod, seg = mma_ids_from_input_ids(torch.tensor([[IMGT, IMGT, 9, 9]]), IMGT, ASST)
    assert len(set(seg[0].tolist())) == 4
    with pytest.raises(TypeError, match="image_token_id"):
        mma_ids_from_input_ids(ids2, "x", ASST)
    with pytest.raises(TypeError, match="input_ids"):
        mma_ids_from_input_ids(ids2.float(), IMGT, ASST)
