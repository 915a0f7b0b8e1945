"""generate() with MMA: prefill from the ids, causal decoding over the cache, chunked prefill, left padding.

Reference: greedy decoding by hand with the *eager* model, re-running the whole sequence each step with
the dense 4D mask from the contract (generated tokens are text, each its own segment).
"""
import pytest
import torch

from test_hf_helpers import (_one_thread, additive, cache_names, dense_allowed, model_pair, out_cache,  # noqa: F401
                             transformers_version)

from mma_kernels import apply_mma

IMG, ANS = 5, 6
TOL = dict(atol=1e-4, rtol=0)


def _prompt(L, n_img=5, img_at=2, ans_at=None, seed=0):
    """(ids [1, L], modality ids, segment ids): the ids written by hand for the layout, not derived."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 90, (1, L), generator=g)
    ids[0, img_at:img_at + n_img] = IMG
    a = L - 1 if ans_at is None else ans_at
    ids[0, a] = ANS
    mod = torch.zeros(1, L, dtype=torch.long)
    mod[0, img_at:img_at + n_img] = 1
    seg = torch.zeros(1, L, dtype=torch.long)  # segment 0 through <|assistant|>, then one per token
    seg[0, a + 1:] = torch.arange(1, L - a)
    return ids, mod, seg


def _reference(eager, ids, mod, seg, new_tokens, window=None):
    """Greedy decoding by hand with the eager model and the dense mask, re-running the whole sequence each step.
    Returns (new tokens [1, n], logits of each step [n, 1, V])."""
    out, steps = ids, []
    for _ in range(new_tokens):
        n = out.shape[1] - ids.shape[1]
        m = torch.cat([mod, torch.zeros(1, n, dtype=torch.long)], 1)
        s = torch.cat([seg, seg.max() + 1 + torch.arange(n)[None]], 1)
        with torch.no_grad():
            logits = eager(out, attention_mask=additive(dense_allowed(m, s, window=window))).logits[:, -1]
        steps.append(logits)
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], 1)
    return out[:, ids.shape[1]:], torch.stack(steps)


def _generate(mma, ids, n, **kw):
    with torch.no_grad():
        g = mma.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, **kw)
    return g.sequences[:, ids.shape[1]:], torch.stack(g.logits)


@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_greedy_generate_matches_eager_dense(name):
    eager, mma = model_pair(name)
    apply_mma(mma, image_token_id=IMG, answer_token_id=ANS)
    ids, mod, seg = _prompt(14)
    ref, ref_logits = _reference(eager, ids, mod, seg, 6)
    got, logits = _generate(mma, ids, 6)
    assert got.tolist() == ref.tolist()
    torch.testing.assert_close(logits, ref_logits, **TOL)  # every step's logits in full
    # explicit ids instead of derivation give the same
    got2, logits2 = _generate(mma, ids, 6, modality_ids=mod, segment_ids=seg)
    assert got2.tolist() == ref.tolist()
    torch.testing.assert_close(logits2, ref_logits, **TOL)
    # ...and the MMA prefill matters: plain causal generation differs from it in the logits
    causal = _generate(mma, ids, 1, modality_ids=torch.zeros_like(mod))[1]
    assert (causal[0] - ref_logits[0]).abs().max() > 1e-3


def test_batched_left_padded_generate_matches_single_rows():
    eager, mma = model_pair("llama")
    apply_mma(mma, image_token_id=IMG, answer_token_id=ANS)
    prompts = [_prompt(14, seed=1), _prompt(10, img_at=1, n_img=4, seed=2)]
    L = max(p[0].shape[1] for p in prompts)
    ids = torch.zeros(2, L, dtype=torch.long)
    att = torch.zeros(2, L, dtype=torch.long)
    for b, (p, _, _) in enumerate(prompts):
        ids[b, L - p.shape[1]:] = p[0]
        att[b, L - p.shape[1]:] = 1
    got, logits = _generate(mma, ids, 5, attention_mask=att, pad_token_id=0)
    for b, (p, mod, seg) in enumerate(prompts):
        ref, ref_logits = _reference(eager, p, mod, seg, 5)
        assert got[b].tolist() == ref[0].tolist()
        torch.testing.assert_close(logits[:, b], ref_logits[:, 0], **TOL)


def test_chunked_prefill_and_split_segment_error():
    eager, mma = model_pair("llama")
    apply_mma(mma, image_token_id=IMG, answer_token_id=ANS)
    ids, mod, seg = _prompt(16, img_at=2, ans_at=11)  # segment 0 = 0..11 (images 2..6 see text through 11)
    ref, ref_logits = _reference(eager, ids, mod, seg, 4)
    full, full_logits = _generate(mma, ids, 4)
    from transformers import DynamicCache

    # transformers 5.0 wants the cache given for a chunked prefill; later releases make one
    def chunk(size=12):  # a fresh cache each call
        return dict(prefill_chunk_size=size, **{cache_names(mma)[0]: DynamicCache(config=mma.config)})

    torch.testing.assert_close(full_logits, ref_logits, **TOL)
    assert full.tolist() == ref.tolist()
    if transformers_version() < (5, 3):  # its chunked prefill leaves cache_position one too far: refused, clearly
        with pytest.raises(ValueError, match=r"transformers before 5.3 advances cache_position twice"):
            _generate(mma, ids, 4, **chunk())
    else:
        chunked, chunked_logits = _generate(mma, ids, 4, **chunk())
        assert chunked.tolist() == ref.tolist()
        torch.testing.assert_close(chunked_logits, ref_logits, **TOL)
    with pytest.raises(ValueError, match=r"chunked prefill: the chunk ends at position 8, inside a mutual segment"):
        mma.generate(ids, max_new_tokens=2, do_sample=False, **chunk(8))


@pytest.mark.parametrize("by", ["keyword", "positional"])
def test_manual_cache_continuation(by):
    """Without generate: prefill with a DynamicCache, then one step; ids cover the prompt only. The cache goes in
    by every name this transformers' forward takes (``cache`` from 5.24, ``past_key_values`` before and as its
    deprecated alias), or positionally (the 4th argument of a decoder's forward)."""
    import warnings

    from transformers import DynamicCache

    eager, mma = model_pair("qwen3")
    ids, mod, seg = _prompt(12)
    steps = []
    for name in cache_names(mma) + ["past_key_values"]:
        def call(x, cache):
            if by == "positional":  # forward(input_ids, attention_mask, position_ids, cache/past_key_values, ...)
                return mma(x, None, None, cache, modality_ids=mod, segment_ids=seg, use_cache=True)
            return mma(x, modality_ids=mod, segment_ids=seg, use_cache=True, **{name: cache})

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # past_key_values is deprecated from 5.24
            out = call(ids, DynamicCache(config=mma.config))
            nxt = out.logits[:, -1:].argmax(-1)
            steps.append(call(nxt, out_cache(out)).logits)
    step = steps[0]
    for other in steps[1:]:
        torch.testing.assert_close(other, step, atol=0, rtol=0)
    full = torch.cat([ids, nxt], 1)
    m = torch.cat([mod, torch.zeros(1, 1, dtype=torch.long)], 1)
    s = torch.cat([seg, seg.max() + 1 + torch.zeros(1, 1, dtype=torch.long)], 1)
    ref = eager(full, attention_mask=additive(dense_allowed(m, s))).logits[:, -1:]
    torch.testing.assert_close(step, ref, **TOL)
    # a step over the cache with a patched model but no ids cannot place the prompt's images: error, not causal
    apply_mma(mma, image_token_id=IMG, answer_token_id=ANS)
    name = cache_names(mma)[0]
    out = mma(ids, use_cache=True, **{name: DynamicCache(config=mma.config)})
    with pytest.raises(ValueError, match=r"a forward over a cache of 12 tokens: image positions cannot be found"):
        mma(nxt, use_cache=True, **{name: out_cache(out)})


def test_sliding_window_cache_in_generate():
    """Mistral, window 12 < prompt + new tokens: transformers' sliding cache drops keys; the mask follows it."""
    eager, mma = model_pair("mistral", sliding_window=12)
    apply_mma(mma, image_token_id=IMG, answer_token_id=ANS)
    ids, mod, seg = _prompt(10)
    ref, ref_logits = _reference(eager, ids, mod, seg, 6, window=12)
    got, logits = _generate(mma, ids, 6)
    assert got.tolist() == ref.tolist()
    torch.testing.assert_close(logits, ref_logits, **TOL)
