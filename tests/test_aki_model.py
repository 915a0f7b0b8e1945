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

from aki_model.fidelity import compare, extended_mask, formats, reference_mask  # noqa: E402

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


def format_batch(processor, conv, imgs, kw):
    if conv == "captions":
        from PIL import Image

        return processor.captions(imgs, [Image.new("RGB", (32, 32), (40, 80, 220)) for _ in imgs])
    return processor(conv, imgs, **kw)


FORMATS = formats(32)


def oracle_dense(model, batch):
    """[B, Lx, Lx]: each row's `extended_mask` (the reference's rule, per turn) placed where the
    model lays the row out in the batch."""
    with torch.no_grad():
        inp = model.build_inputs(batch["input_ids"], batch.get("pixel_values"), batch["attention_mask"])
    B, Lx = inp["modality_ids"].shape
    out = torch.zeros(B, Lx, Lx, dtype=torch.bool)
    cfg = model.config
    for b in range(B):
        m = extended_mask(batch["input_ids"][b].tolist(), batch["attention_mask"][b].tolist(), cfg.image_token_id,
                          cfg.assistant_token_id, cfg.num_image_tokens)
        off = int(inp["index"][b, -1]) + 1 - m.shape[0]
        out[b, off:off + m.shape[0], off:off + m.shape[0]] = m
    return out, inp


# ---------------------------------------------------------------------------------- mask fidelity
def test_reference_oracle_by_hand():
    """The reference's mask for <s> <image> q <|end|> <|assistant|> \n a </s> with 2 visual tokens,
    written out cell by cell: the image rows see q, <|end|> and <|assistant|>, not the newline after."""
    S = SPECIAL_IDS
    ids = [S["<s>"], IMG, 50, S["<|end|>"], ASSISTANT, S["\n"], 60, S["<|endoftext|>"], PAD]
    attn = [1] * 8 + [0]
    want = torch.ones(10, 10).tril().bool()
    want[1:3, 3:6] = True  # image (positions 1, 2) -> q, <|end|>, <|assistant|> (3, 4, 5)
    want[:, 9] = False  # padding key
    got = reference_mask(ids, attn, IMG, ASSISTANT, 2)
    assert torch.equal(got, want)
    assert torch.equal(extended_mask(ids, attn, IMG, ASSISTANT, 2), want)
    # no <|assistant|> (a caption): no look-ahead at all
    cap = [S["<s>"], IMG, 50, 51, S["<|endofchunk|>"], S["<|endoftext|>"]]
    assert torch.equal(reference_mask(cap, [1] * 6, IMG, ASSISTANT, 2), torch.ones(7, 7).tril().bool())
    assert reference_mask([IMG, IMG, ASSISTANT], [1, 1, 1], IMG, ASSISTANT, 2) is None  # the reference crashes


@pytest.mark.parametrize("case", range(len(FORMATS)), ids=[f[0] for f in FORMATS])
def test_mask_equals_reference_on_its_formats(model, processor, case):
    name, conv, imgs, kw = FORMATS[case]
    r = compare(model, format_batch(processor, conv, imgs, kw))
    assert r["differ_extended"] == 0, r
    if "extension" in name:
        assert r["reference_crashes"]
    else:
        assert r["differ_reference"] == 0, r
    has_q = conv != "captions" and "assistant" in str(conv) or kw.get("add_generation_prompt")
    has_img = imgs != [[]] and conv != "captions"
    assert (r["image_rows_with_lookahead"] > 0) == bool(has_q and has_img), r


def test_compare_sees_the_former_mask(model, processor):
    """Sensitivity: ids that end the segment *before* <|assistant|> (the former behaviour) differ from
    the reference by one cell per visual token."""
    import aki_model.fidelity as fid

    _, b = batch_of(processor, seed=1, n=1)
    orig = fid.model_masks

    def former(m, batch):
        out = orig(m, batch)
        ids = batch["input_ids"][0].tolist()
        n = m.config.num_image_tokens
        s, a = ids.index(IMG), ids.index(ASSISTANT) + n - 1  # image rows; <|assistant|> once expanded
        d = out[0].clone()
        d[s:s + n, a] = False
        return [d]

    fid.model_masks = former
    try:
        r = compare(model, b)
    finally:
        fid.model_masks = orig
    assert r["differ_reference"] == model.config.num_image_tokens


def eager_logits(model, inp, dense):
    """The same LLM weights with eager attention and an explicit additive 4D mask."""
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_config(model.config.build_text_config(), attn_implementation="eager")
    eager.load_state_dict(model.lang_model.state_dict())
    bias = torch.zeros(dense.shape, dtype=torch.float32).masked_fill(~dense, NEG)[:, None]
    with torch.no_grad():
        return eager.eval()(inputs_embeds=inp["inputs_embeds"], attention_mask=bias,
                            position_ids=inp["position_ids"]).logits


# ---------------------------------------------------------------------- logits vs eager + dense mask
@pytest.mark.parametrize("images,turns", [(1, 1), (2, 2)])
def test_logits_equal_eager_with_dense_mask(model, processor, images, turns):
    _, b = batch_of(processor, seed=3, n=2, images=images, turns=turns)
    with torch.no_grad():
        out = model(**b)
    dense, inp = oracle_dense(model, b)
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


LABELLED = [k for k, f in enumerate(FORMATS) if not f[3].get("add_generation_prompt")]


@pytest.mark.parametrize("case", LABELLED, ids=[FORMATS[k][0] for k in LABELLED])
def test_no_leakage_in_any_format(model, processor, case):
    """Changing any answer or caption token (any labelled token) never changes an earlier logit; it
    does change its own and later ones (the probe is live)."""
    _, conv, imgs, kw = FORMATS[case]
    b = format_batch(processor, conv, imgs, kw)
    words = [processor.tokenizer.convert_tokens_to_ids(w) for w in ("blue", "green")]
    probed = 0
    for r in range(b["input_ids"].shape[0]):
        ids, lab = b["input_ids"][r], b["labels"][r]
        pos = [int(p) for p in (lab != -100).nonzero().flatten()]
        assert pos, "every format with an answer has labelled tokens"
        variants = [ids]
        for p in pos:
            v = ids.clone()
            v[p] = words[0] if int(ids[p]) != words[0] else words[1]
            variants.append(v)
        n = len(variants)
        batch = {"input_ids": torch.stack(variants), "attention_mask": b["attention_mask"][r:r + 1].expand(n, -1)}
        if "pixel_values" in b:
            batch["pixel_values"] = b["pixel_values"][r:r + 1].expand(n, *b["pixel_values"].shape[1:])
        with torch.no_grad():
            logits = model(**batch).logits
        for k, p in enumerate(pos, start=1):
            torch.testing.assert_close(logits[k, :p], logits[0, :p], atol=0, rtol=0,
                                       msg=f"row {r}: changing labelled token {p} changed an earlier logit")
            assert not torch.equal(logits[k, p], logits[0, p])
            probed += 1
    assert probed >= 3


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


ROPE = {"rope_scaling": {"type": "longrope", "short_factor": [1.0 + 0.01 * i for i in range(48)],
                         "long_factor": [1.0 + 0.5 * i for i in range(48)]}}


def resampler_layout(depth, dim=1152, inner=3072, heads=8, dim_head=64, latents=144, ff=4):
    """Names and shapes of the reference's PerceiverResampler (src/helpers.py) as AKI builds it."""
    hd = heads * dim_head
    out = {"latents": (latents, dim), "norm.weight": (dim,), "norm.bias": (dim,),
           "projection.weight": (inner, dim), "projection.bias": (inner,)}
    for i in range(depth):
        a, f = f"layers.{i}.0.", f"layers.{i}.1."
        out.update({a + "norm_media.weight": (dim,), a + "norm_media.bias": (dim,), a + "norm_latents.weight": (dim,),
                    a + "norm_latents.bias": (dim,), a + "to_q.weight": (hd, dim), a + "to_kv.weight": (2 * hd, dim),
                    a + "to_out.weight": (dim, hd), f + "0.weight": (dim,), f + "0.bias": (dim,),
                    f + "1.weight": (ff * dim, dim), f + "3.weight": (dim, ff * dim)})
    return out


def released_layout(vision_layers, llm_layers, resampler_depth):
    """Every tensor of the released AKI-4B at the given depths, widths as released: SigLIP so400m
    vision_model (with its head), the resampler, Phi-3.5-mini with AKI's decoupled embeddings."""
    H, I, D, V = 1152, 4304, 3072, 32064
    lay = {"vision_encoder.embeddings.patch_embedding.weight": (H, 3, 14, 14),
           "vision_encoder.embeddings.patch_embedding.bias": (H,),
           "vision_encoder.embeddings.position_embedding.weight": (729, H),
           "vision_encoder.post_layernorm.weight": (H,), "vision_encoder.post_layernorm.bias": (H,),
           "vision_encoder.head.probe": (1, 1, H), "vision_encoder.head.attention.in_proj_weight": (3 * H, H),
           "vision_encoder.head.attention.in_proj_bias": (3 * H,),
           "vision_encoder.head.attention.out_proj.weight": (H, H), "vision_encoder.head.attention.out_proj.bias": (H,),
           "vision_encoder.head.layernorm.weight": (H,), "vision_encoder.head.layernorm.bias": (H,),
           "vision_encoder.head.mlp.fc1.weight": (I, H), "vision_encoder.head.mlp.fc1.bias": (I,),
           "vision_encoder.head.mlp.fc2.weight": (H, I), "vision_encoder.head.mlp.fc2.bias": (H,)}
    for i in range(vision_layers):
        e = f"vision_encoder.encoder.layers.{i}."
        for proj in ("q", "k", "v", "out"):
            lay.update({e + f"self_attn.{proj}_proj.weight": (H, H), e + f"self_attn.{proj}_proj.bias": (H,)})
        lay.update({e + "layer_norm1.weight": (H,), e + "layer_norm1.bias": (H,), e + "layer_norm2.weight": (H,),
                    e + "layer_norm2.bias": (H,), e + "mlp.fc1.weight": (I, H), e + "mlp.fc1.bias": (I,),
                    e + "mlp.fc2.weight": (H, I), e + "mlp.fc2.bias": (H,)})
    lay.update({"vision_tokenizer." + k: v for k, v in resampler_layout(resampler_depth).items()})
    lay.update({"lang_model.model.embed_tokens.weight": (V, D), "lang_model.model.embed_tokens.additional_embedding.weight": (2, D),
                "lang_model.model.norm.weight": (D,), "lang_model.lm_head.weight": (V, D), "lang_model.lm_head.bias": (V,),
                "lang_model.lm_head.additional_fc.weight": (2, D), "lang_model.lm_head.additional_fc.bias": (2,)})
    for i in range(llm_layers):
        e = f"lang_model.model.layers.{i}."
        lay.update({e + "self_attn.qkv_proj.weight": (3 * D, D), e + "self_attn.o_proj.weight": (D, D),
                    e + "mlp.gate_up_proj.weight": (2 * 8192, D), e + "mlp.down_proj.weight": (D, 8192),
                    e + "input_layernorm.weight": (D,), e + "post_attention_layernorm.weight": (D,)})
    return lay


def test_resampler_matches_the_reference_layout():
    """All 71 resampler tensors of AKI-4B (depth 6) have the reference's names and shapes (8 heads x 64)."""
    from aki_model.resampler import PerceiverResampler

    want = resampler_layout(6)
    assert len(want) == 71
    with torch.device("meta"):
        r = PerceiverResampler(dim=1152, dim_inner=3072, depth=6, dim_head=64, heads=8, num_latents=144)
    assert {k: tuple(v.shape) for k, v in r.state_dict().items()} == want


def test_strict_load_of_a_released_width_checkpoint():
    """A checkpoint with the released names and shapes (depth 1 everywhere, widths as released) loads
    strictly into AKIConfig.aki_4b; its merged vocabulary keeps every row in place."""
    from aki_model.weights import load_aki_checkpoint

    g = torch.Generator().manual_seed(0)

    def tensor(shape):  # distinct values per row, no memory for the rest of the row
        t = torch.randn(shape[0], generator=g).to(torch.bfloat16)
        return t.view(-1, *[1] * (len(shape) - 1)).expand(shape)

    sd = {k: tensor(v) for k, v in released_layout(1, 1, 1).items()}
    cfg = AKIConfig.aki_4b(text_config={"num_hidden_layers": 1, **ROPE}, vision_config={"num_hidden_layers": 1},
                           resampler_depth=1)
    model = load_aki_checkpoint(sd, cfg)
    n0 = 32012  # Phi-3.5's 32011 tokens + <pad>: the reference's initial_tokenizer_len
    emb = model.lang_model.get_input_embeddings().weight
    head = model.lang_model.get_output_embeddings()
    assert emb.shape == (32014, 3072) and head.weight.shape == (32014, 3072) and head.bias.shape == (32014,)
    assert torch.equal(emb[:n0, 0], sd["lang_model.model.embed_tokens.weight"][:n0, 0])
    assert torch.equal(emb[n0:, 0], sd["lang_model.model.embed_tokens.additional_embedding.weight"][:, 0])
    assert torch.equal(head.weight[n0:, 0], sd["lang_model.lm_head.additional_fc.weight"][:, 0])
    assert torch.equal(head.bias, torch.cat([sd["lang_model.lm_head.bias"][:n0], sd["lang_model.lm_head.additional_fc.bias"]]))
    assert model.vision_tokenizer.layers[0][0].to_q.weight.shape == (512, 1152)
    assert not any(p.device.type == "meta" for p in model.parameters())
    assert model.lang_model.config.rope_parameters["rope_type"] == "longrope"
    # the former resampler shape (16 heads x 96) cannot load the released weights
    with pytest.raises(ValueError, match="to_q"):
        load_aki_checkpoint(sd, AKIConfig.from_dict({**cfg.to_dict(), "resampler_heads": 16, "resampler_dim_head": 96}))


def test_aki_4b_preset():
    c = AKIConfig.aki_4b(text_config=ROPE)
    t = c.build_text_config()
    assert (t.num_attention_heads, t.hidden_size // t.num_attention_heads, t.num_hidden_layers) == (32, 96, 32)
    assert (t.vocab_size, t.bos_token_id, t.eos_token_id, t.max_position_embeddings,
            t.original_max_position_embeddings) == (32014, 1, 32000, 131072, 4096)
    v = c.build_vision_config()
    assert (v.image_size, v.patch_size, v.hidden_size) == (384, 14, 1152)
    assert (c.num_image_tokens, c.resampler_heads, c.resampler_dim_head, c.resampler_depth) == (144, 8, 64, 6)
    assert (c.image_token_id, c.pad_token_id, c.eos_token_id, c.assistant_token_id) == (32012, 32011, 32000, 32001)
    with pytest.raises(ValueError, match="longrope"):
        AKIConfig.aki_4b()


def test_aki_4b_reads_the_rope_of_a_phi_config(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3", "rope_theta": 10000.0, **ROPE}))
    c = AKIConfig.aki_4b(phi_config=str(tmp_path))
    assert c.text_config["rope_scaling"] == ROPE["rope_scaling"] and c.text_config["rope_theta"] == 10000.0
