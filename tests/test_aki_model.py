"""AKI model: the mask it uses, equality with eager attention under the dense AKI mask, no answer
leakage, generation, save/load, and loading the released checkpoint layout (all tiny, CPU)."""
import random

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from aki_model import AKIConfig, AKIModel, AKIProcessor  # noqa: E402
from aki_model.data import make_example  # noqa: E402
from aki_model.tokenizer import SPECIAL_IDS  # noqa: E402

IMG, ASSISTANT, PAD = SPECIAL_IDS["<image>"], SPECIAL_IDS["<|assistant|>"], SPECIAL_IDS["<pad>"]
NEG = torch.finfo(torch.float32).min


def sharpen(model, std=0.25, seed=0):
    """Larger random weights than the default init, so that attention patterns (and thus any mask
    difference) clearly show in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture(scope="module")
def processor():
    return AKIProcessor(image_size=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sharpen(AKIModel(AKIConfig.tiny(vocab_size=256))).eval()


@pytest.fixture(scope="module")
def causal_model(model):
    m = AKIModel(AKIConfig.tiny(vocab_size=256, attention="causal")).eval()
    m.load_state_dict(model.state_dict())
    return m


def batch_of(processor, seed, n=3, images=1, turns=1, **kw):
    rng = random.Random(seed)
    exs = [make_example(rng, 32, images, turns) for _ in range(n)]
    return exs, processor([e["conversation"] for e in exs], [e["images"] for e in exs], **kw)


def aki_dense_mask(input_ids, attention_mask, num_image_tokens):
    """The AKI rule, built densely and independently of mma_kernels, over the expanded sequence.

    Mirrors the reference code: replace each <image> by num_image_tokens positions, causal mask,
    then mask[image_start:image_end, image_end:question_end] = 1 where question_end is the next
    <|assistant|> (exclusive); padded keys are masked. Several images / turns: each image block
    gets the same look-ahead up to the next <|assistant|> after it. Returns bool [B, Lx, Lx] for
    the expanded rows laid out as the model lays them out (right padding)."""
    rows = []
    for ids, am in zip(input_ids.tolist(), attention_mask.tolist()):
        toks, valid = [], []
        for t, a in zip(ids, am):
            if t == IMG and a:
                toks += ["img"] * num_image_tokens
                valid += [1] * num_image_tokens
            else:
                toks.append("asst" if t == ASSISTANT else "txt")
                valid.append(a)
        rows.append((toks, valid))
    Lx = max(len(t) for t, _ in rows)
    out = torch.zeros(len(rows), Lx, Lx, dtype=torch.bool)
    for b, (toks, valid) in enumerate(rows):
        n = len(toks)
        m = torch.ones(n, n).tril().bool()
        i = 0
        while i < n:
            if toks[i] != "img":
                i += 1
                continue
            s = i
            while i < n and toks[i] == "img":
                i += 1
            e = i  # image block [s, e)
            q_end = next((j + 1 for j in range(e, n) if toks[j] == "asst"), e)
            # text after the block through <|assistant|> (none without it); later images stay causal
            for j in range(e, q_end):
                if toks[j] != "img":
                    m[s:e, j] = True
        m &= torch.tensor(valid, dtype=torch.bool)[None, :]
        out[b, :n, :n] = m
    return out


def captured_masks(model, fn):
    """Run fn() and return the MMAMasks the patched LLM built (what its attention really used)."""
    import mma_kernels.integrations.transformers as tr

    seen = []
    orig = tr.build_mma_mask

    def spy(*a, **k):
        m = orig(*a, **k)
        seen.append(m)
        return m

    tr.build_mma_mask = spy
    try:
        fn()
    finally:
        tr.build_mma_mask = orig
    return seen


def eager_logits(model, inp, dense):
    """The same LLM weights with eager attention and an explicit additive 4D mask."""
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_config(model.config.build_text_config(), attn_implementation="eager")
    eager.load_state_dict(model.lang_model.state_dict())
    bias = torch.zeros(dense.shape, dtype=torch.float32).masked_fill(~dense, NEG)[:, None]
    with torch.no_grad():
        return eager.eval()(inputs_embeds=inp["inputs_embeds"], attention_mask=bias,
                            position_ids=inp["position_ids"]).logits


# ---------------------------------------------------------------------------------- mask fidelity
def test_mask_fidelity_single_image(model, processor):
    _, b = batch_of(processor, seed=1, n=3)
    with torch.no_grad():
        masks = captured_masks(model, lambda: model(**b))
    assert len(masks) == 1, "one MMAMask per forward, shared by the layers"
    used = masks[0].to_dense()
    want = aki_dense_mask(b["input_ids"], b["attention_mask"], model.config.num_image_tokens)
    assert used.shape == want.shape
    valid = model.build_inputs(b["input_ids"], b["pixel_values"], b["attention_mask"])["attention_mask"].bool()
    for r in range(used.shape[0]):
        v = valid[r]
        assert torch.equal(used[r][v], want[r][v]), f"row {r}: mask differs from the AKI rule"
        assert not used[r][~v].any(), "padding queries see nothing"
    # the look-ahead is really there: image rows see the question text after them
    n = model.config.num_image_tokens
    s = int((b["input_ids"][0] == IMG).nonzero()[0])
    assert used[0, s, s + n:s + n + 3].all()


def test_mask_fidelity_worked_example_positions(model, processor):
    """The contract's worked layout: images see their question through <|assistant|>, never the answer."""
    _, b = batch_of(processor, seed=2, n=1)
    inp = model.build_inputs(b["input_ids"], b["pixel_values"], b["attention_mask"])
    mod = inp["modality_ids"][0]
    img = (mod == 1).nonzero().flatten()
    ids_x = torch.full_like(mod, -5)
    ids_x[mod != 1] = b["input_ids"][0][b["input_ids"][0] != IMG]
    asst = int((ids_x == ASSISTANT).nonzero()[0])
    with torch.no_grad():
        dense = captured_masks(model, lambda: model(**b))[0].to_dense()[0]
    first, last = int(img[0]), int(img[-1])
    assert dense[first, last + 1:asst + 1].all() and not dense[first, asst + 1:].any()
    assert not dense[first, first + 1:last + 1].any(), "image -> later image stays causal (policy mma)"
    assert not dense.triu(1)[asst:].any(), "answer rows are causal"


# ---------------------------------------------------------------------- logits vs eager + dense mask
@pytest.mark.parametrize("images,turns", [(1, 1), (2, 2)])
def test_logits_equal_eager_with_dense_mask(model, processor, images, turns):
    _, b = batch_of(processor, seed=3, n=2, images=images, turns=turns)
    with torch.no_grad():
        out = model(**b)
    inp = out.inputs
    dense = aki_dense_mask(b["input_ids"], b["attention_mask"], model.config.num_image_tokens)
    ref = eager_logits(model, inp, dense)
    ours = model.lang_model
    with torch.no_grad():
        full = ours(inputs_embeds=inp["inputs_embeds"], attention_mask=inp["attention_mask"],
                    position_ids=inp["position_ids"], modality_ids=inp["modality_ids"],
                    segment_ids=inp["segment_ids"]).logits
    v = inp["attention_mask"].bool()
    torch.testing.assert_close(full[v], ref[v], atol=2e-5, rtol=2e-5)
    # the collapsed logits are those of the input positions
    idx = inp["index"]
    torch.testing.assert_close(out.logits, full.gather(1, idx[..., None].expand(-1, -1, full.shape[-1])))
    # sensitivity: a plain causal mask gives clearly different logits on the image rows
    causal = torch.ones_like(dense).tril() & v[:, None, :]
    ref_c = eager_logits(model, inp, causal)
    assert (ref_c[v] - full[v]).abs().max() > 1e-2


def test_causal_ablation_equals_eager_causal(causal_model, processor):
    _, b = batch_of(processor, seed=4, n=2)
    with torch.no_grad():
        inp = causal_model(**b).inputs
        full = causal_model.lang_model(inputs_embeds=inp["inputs_embeds"], attention_mask=inp["attention_mask"],
                                       position_ids=inp["position_ids"], modality_ids=inp["modality_ids"],
                                       segment_ids=inp["segment_ids"]).logits
    v = inp["attention_mask"].bool()
    L = v.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()[None] & v[:, None, :]
    torch.testing.assert_close(full[v], eager_logits(causal_model, inp, causal)[v], atol=2e-5, rtol=2e-5)


# ------------------------------------------------------------------------------------ no leakage
def _answer_positions(labels):
    return [int(p) for p in (labels != -100).nonzero().flatten()]


@pytest.mark.parametrize("images,turns", [(1, 1), (3, 1), (1, 3), (2, 2)])
def test_no_leakage_from_later_answer_tokens(model, processor, images, turns):
    _, b = batch_of(processor, seed=10 + images * 7 + turns, n=1, images=images, turns=turns)
    ids, lab = b["input_ids"][0], b["labels"][0]
    ans = _answer_positions(lab)
    assert len(ans) == 2 * turns  # each answer: one word + <|end|>
    g = torch.Generator().manual_seed(0)
    variants = [ids]
    for p in ans:  # for every answer position: change every later answer token
        v = ids.clone()
        later = [q for q in ans if q > p]
        if not later:
            continue
        v[later] = torch.randint(10, 200, (len(later),), generator=g)
        variants.append(v)
    B = len(variants)
    batch = {"input_ids": torch.stack(variants), "attention_mask": b["attention_mask"].expand(B, -1),
             "pixel_values": b["pixel_values"].expand(B, *b["pixel_values"].shape[1:])}
    with torch.no_grad():
        logits = model(**batch).logits
    for k, p in enumerate([p for p in ans if any(q > p for q in ans)], start=1):
        torch.testing.assert_close(logits[k, : p + 1], logits[0, : p + 1], atol=0, rtol=0,
                                   msg=f"answer position {p} sees later answer tokens")
        later = [q for q in ans if q > p]
        assert not torch.equal(logits[k, later[-1]], logits[0, later[-1]])  # the change is real


def test_leakage_check_detects_a_leaky_mask(model, processor):
    """Control: one segment for the whole row (no break at <|assistant|>) lets images see the
    answer, and the check used above does see it."""
    _, b = batch_of(processor, seed=21, n=1, images=1, turns=1)
    ids, lab = b["input_ids"][0], b["labels"][0]
    ans = _answer_positions(lab)
    v = ids.clone()
    v[ans[-1]] = (v[ans[-1]] + 7) % 200 + 10
    batch = {"input_ids": torch.stack([ids, v]), "attention_mask": b["attention_mask"].expand(2, -1),
             "pixel_values": b["pixel_values"].expand(2, *b["pixel_values"].shape[1:])}
    with torch.no_grad():
        inp = model.build_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
        leaky = model.lang_model(inputs_embeds=inp["inputs_embeds"], attention_mask=inp["attention_mask"],
                                 position_ids=inp["position_ids"], modality_ids=inp["modality_ids"],
                                 segment_ids=torch.zeros_like(inp["segment_ids"])).logits
    p = int(inp["index"][0, ans[0]])
    assert not torch.equal(leaky[1, p], leaky[0, p])


# ------------------------------------------------------------------------------------ generation
def _greedy_reference(model, input_ids, pixel_values, attention_mask, n):
    """Greedy decoding by re-running the full forward (no cache) for every new token."""
    ids, am = input_ids, attention_mask
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=pixel_values, attention_mask=am).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids, am = torch.cat([ids, nxt], 1), torch.cat([am, torch.ones_like(nxt)], 1)
    return ids


def test_generate_greedy_matches_uncached_and_is_deterministic(model, processor):
    exs, _ = batch_of(processor, seed=30, n=3, images=1, turns=1)
    exs[1] = make_example(random.Random(5), 32, 2, 2)  # a longer row: left padding in the batch
    g = processor([e["conversation"][:-1] for e in exs], [e["images"] for e in exs],
                  add_generation_prompt=True, padding_side="left")
    n = 5
    out1 = model.generate(g["input_ids"], g["pixel_values"], g["attention_mask"], max_new_tokens=n, eos_token_id=None)
    out2 = model.generate(g["input_ids"], g["pixel_values"], g["attention_mask"], max_new_tokens=n, eos_token_id=None)
    assert torch.equal(out1, out2)
    assert out1.shape == (3, g["input_ids"].shape[1] + n)
    ref = _greedy_reference(model, g["input_ids"], g["pixel_values"], g["attention_mask"], n)
    assert torch.equal(out1, ref)
    # batched with left padding == one row at a time
    for r in range(3):
        gi = processor([exs[r]["conversation"][:-1]], [exs[r]["images"]], add_generation_prompt=True)
        oi = model.generate(gi["input_ids"], gi["pixel_values"], gi["attention_mask"], max_new_tokens=n, eos_token_id=None)
        assert torch.equal(oi[0, -n:], out1[r, -n:])


def test_generate_sampling_is_seeded(model, processor):
    rng = random.Random(31)
    exs = [make_example(rng, 32) for _ in range(2)]
    g = processor([e["conversation"][:-1] for e in exs], [e["images"] for e in exs], add_generation_prompt=True,
                  padding_side="left")
    kw = dict(max_new_tokens=6, do_sample=True, top_k=50, temperature=1.5, eos_token_id=None)
    torch.manual_seed(1)
    a = model.generate(g["input_ids"], g["pixel_values"], g["attention_mask"], **kw)
    torch.manual_seed(1)
    b = model.generate(g["input_ids"], g["pixel_values"], g["attention_mask"], **kw)
    assert torch.equal(a, b)
    greedy = model.generate(g["input_ids"], g["pixel_values"], g["attention_mask"], max_new_tokens=6, eos_token_id=None)
    assert not torch.equal(a, greedy)


# ------------------------------------------------------------------------------------- save / load
def test_save_load_roundtrip(model, processor, tmp_path):
    _, b = batch_of(processor, seed=40, n=2, images=2, turns=1)
    model.save_pretrained(str(tmp_path), processor)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "aki_config.json").exists()
    loaded = AKIModel.from_pretrained(str(tmp_path))
    proc2 = AKIProcessor.from_pretrained(str(tmp_path))
    b2 = proc2([e for e in [[{"role": "user", "content": "<image>\nwhat color is the shape ?"}]]],
               [[torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()]])
    b1 = processor([[{"role": "user", "content": "<image>\nwhat color is the shape ?"}]],
                   [[torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()]])
    assert torch.equal(b1["input_ids"], b2["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**b).logits, loaded(**b).logits)
    assert loaded.config == model.config


# -------------------------------------------------------------------- released checkpoint layout
def test_load_released_aki_layout(model, processor, tmp_path):
    """A tiny checkpoint laid out like AKI-4B's (decoupled embeddings with unused padding rows,
    lm_head bias, SigLIP head, `vision_encoder.*` without nesting), written here by hand."""
    from safetensors.torch import save_file

    from aki_model.weights import load_aki_checkpoint

    cfg = model.config
    sd = model.canonical_state_dict()
    V, k = cfg.text_config["vocab_size"], 2  # the last two ids play AKI's added tokens
    n0 = V - k
    g = torch.Generator().manual_seed(0)
    emb, head = sd.pop("lang_model.model.embed_tokens.weight"), sd.pop("lang_model.lm_head.weight")
    D = emb.shape[1]
    released = {}
    for name, t in sd.items():
        released[name] = t.clone()
    pad_rows = 5  # the released matrices have more rows than the tokenizer (32064 vs 32011)
    released["lang_model.model.embed_tokens.weight"] = torch.cat([emb[:n0], torch.randn(pad_rows, D, generator=g)])
    released["lang_model.model.embed_tokens.additional_embedding.weight"] = emb[n0:].clone()
    bias = torch.randn(V, generator=g)
    released["lang_model.lm_head.weight"] = torch.cat([head[:n0], torch.randn(pad_rows, D, generator=g)])
    released["lang_model.lm_head.bias"] = torch.cat([bias[:n0], torch.randn(pad_rows, generator=g)])
    released["lang_model.lm_head.additional_fc.weight"] = head[n0:].clone()
    released["lang_model.lm_head.additional_fc.bias"] = bias[n0:].clone()
    hid = cfg.vision_config["hidden_size"]
    released["vision_encoder.head.probe"] = torch.randn(1, 1, hid, generator=g)
    released["vision_encoder.head.attention.in_proj_weight"] = torch.randn(3 * hid, hid, generator=g)
    assert all(not n.startswith("vision_encoder.vision_model.") for n in released)
    path = tmp_path / "aki_released.safetensors"
    save_file({n: t.contiguous() for n, t in released.items()}, str(path))

    loaded = load_aki_checkpoint(str(path), cfg)
    assert loaded.config.lm_head_bias
    _, b = batch_of(processor, seed=50, n=2)
    with torch.no_grad():
        want = model(**b).logits + bias  # the original weights, plus the checkpoint's output bias
        got = loaded(**b).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_aki_4b_config_shapes():
    c = AKIConfig.aki_4b()
    t = c.build_text_config()
    assert (t.num_attention_heads, t.hidden_size // t.num_attention_heads, t.num_hidden_layers) == (32, 96, 32)
    v = c.build_vision_config()
    assert (v.image_size, v.patch_size, v.hidden_size) == (384, 14, 1152)
    assert c.num_image_tokens == 144 and c.image_token_id == 32011 and c.assistant_token_id == 32001
