"""Greedy `generate` of a tiny Hugging Face model with ``apply_mma(backend="triton")`` (the interpreter on CPU):
every decoding step runs the decode kernel (`decode_ops.COUNTS`), and every step's logits match the same
model on the PyTorch backend. The prompts are longer than 16 tokens, so the prefill runs the prefill kernel
and each later step (one new token) the decode path, once per layer.
"""
import pytest
import torch

from test_hf_helpers import _one_thread, model_pair  # noqa: F401

from mma_kernels import apply_mma
from mma_kernels.ops import decode_ops

IMG, ANS = 5, 6
TOL = dict(atol=1e-4, rtol=0)


def _prompt(L, n_img=5, img_at=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 90, (1, L), generator=g)
    ids[0, img_at:img_at + n_img] = IMG
    ids[0, L - 1] = ANS
    return ids


def _generate(model, ids, n, **kw):
    with torch.no_grad():
        g = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_logits=True,
                           return_dict_in_generate=True, **kw)
    return g.sequences[:, ids.shape[1]:], torch.stack(g.logits)


@pytest.fixture
def models(monkeypatch):
    monkeypatch.setattr(decode_ops, "DECODE", "auto")
    monkeypatch.setattr(decode_ops, "NUM_SPLITS", 2)  # short prompts: split anyway, so the merge runs too
    _, triton_model = model_pair("llama")
    _, torch_model = model_pair("llama")
    apply_mma(triton_model, image_token_id=IMG, answer_token_id=ANS, backend="triton")
    apply_mma(torch_model, image_token_id=IMG, answer_token_id=ANS, backend="torch")
    return triton_model, torch_model


def test_every_decode_step_takes_the_decode_path(models):
    triton_model, torch_model = models
    ids = _prompt(20)
    n, layers = 4, triton_model.config.num_hidden_layers
    ref, ref_logits = _generate(torch_model, ids, n)
    before = dict(decode_ops.COUNTS)
    got, logits = _generate(triton_model, ids, n)
    assert decode_ops.COUNTS["decode"] - before.get("decode", 0) == (n - 1) * layers
    assert decode_ops.COUNTS["merge"] - before.get("merge", 0) == (n - 1) * layers
    assert got.tolist() == ref.tolist()
    torch.testing.assert_close(logits, ref_logits, **TOL)


def test_batched_left_padded_generate(models):
    triton_model, torch_model = models
    prompts = [_prompt(21, seed=1), _prompt(17, img_at=1, n_img=4, seed=2)]
    L = max(p.shape[1] for p in prompts)
    ids = torch.zeros(2, L, dtype=torch.long)
    att = torch.zeros(2, L, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, L - p.shape[1]:] = p[0]
        att[b, L - p.shape[1]:] = 1
    n, layers = 3, triton_model.config.num_hidden_layers
    ref, ref_logits = _generate(torch_model, ids, n, attention_mask=att, pad_token_id=0)
    before = decode_ops.COUNTS["decode"]
    got, logits = _generate(triton_model, ids, n, attention_mask=att, pad_token_id=0)
    assert decode_ops.COUNTS["decode"] - before == (n - 1) * layers
    assert got.tolist() == ref.tolist()
    torch.testing.assert_close(logits, ref_logits, **TOL)
