"""AKIProcessor against the AKI reference's templates, token for token: the in-code tokenizer, a
tiny Hugging Face BPE tokenizer built here, and a tokenizer laid out like Phi-3.5-mini's (ids of
the added tokens). No downloads."""
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from aki_model import AKIConfig, AKIProcessor  # noqa: E402
from aki_model.processor import AKI_SYSTEM_MESSAGE, prepare_tokenizer  # noqa: E402
from aki_model.tokenizer import SPECIAL_IDS  # noqa: E402

PHI_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
             "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def reference_sft_text(system, question, answer):
    """The reference's training text (train/sft_data_utils/templates, templatize with one example),
    re-stated: the system role, the image prompt and "{q}<|end|>" / "<|assistant|>\n{a}", joined by "\n"."""
    return "\n".join(["<|system|>\n" + system + "<|end|>", "<|user|>\n<image>", question + "<|end|>",
                      "<|assistant|>\n" + answer])


def test_in_code_tokenizer_template_by_hand():
    p = AKIProcessor(image_size=32)
    t = p.tokenizer
    conv = [{"role": "system", "content": "you are a helpful assistant ."},
            {"role": "user", "content": "<image>\nwhat color is the shape ?"},
            {"role": "assistant", "content": "red"}]
    ids, labels = p.encode_conversation(conv)
    w = t.convert_tokens_to_ids
    S = SPECIAL_IDS
    want = ([S["<s>"], S["<|system|>"], S["\n"]] + [w(x) for x in "you are a helpful assistant .".split()]
            + [S["<|end|>"], S["\n"], S["<|user|>"], S["\n"], S["<image>"], S["\n"]]
            + [w(x) for x in "what color is the shape ?".split()]
            + [S["<|end|>"], S["\n"], S["<|assistant|>"], S["\n"], w("red"), S["<|endoftext|>"]])
    assert ids == want
    # labels: everything after <|assistant|> (newline, answer, EOS), as the reference
    assert [i for i, lab in zip(ids, labels) if lab != -100] == [S["\n"], w("red"), S["<|endoftext|>"]]
    assert all(lab in (-100, i) for i, lab in zip(ids, labels))
    # generation prompt: no EOS, ends with <|assistant|>\n
    g, _ = p.encode_conversation(conv[:-1], add_generation_prompt=True)
    assert g == want[:-2]
    # the default system message is the reference's
    d, _ = p.encode_conversation(conv[1:])
    assert d[:2] == [S["<s>"], S["<|system|>"]] and p.prompt_text(conv[1:]).startswith(
        "<|system|>\n" + AKI_SYSTEM_MESSAGE + "<|end|>\n<|user|>\n")
    # captions: <s><image>{caption}<|endofchunk|><|endoftext|>, labels on the caption and the two end tokens
    c, cl = p.encode_caption("a red circle .")
    assert c == [S["<s>"], S["<image>"]] + [w(x) for x in "a red circle .".split()] + [S["<|endofchunk|>"], S["<|endoftext|>"]]
    assert cl[:2] == [-100, -100] and cl[2:] == c[2:]
    with pytest.raises(ValueError, match="placeholders"):
        p(conv, [])


def test_two_turns_labels_each_answer():
    p = AKIProcessor(image_size=32, default_system=None)
    conv = [{"role": "user", "content": "<image>\nwhat color is the shape ?"}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": "<image>\nwhat shape is in this image ?"}, {"role": "assistant", "content": "circle"}]
    assert p.prompt_text(conv) == ("<|user|>\n<image>\nwhat color is the shape ?<|end|>\n<|assistant|>\nred\n"
                                   "<|user|>\n<image>\nwhat shape is in this image ?<|end|>\n<|assistant|>\ncircle")
    ids, labels = p.encode_conversation(conv)
    w = p.tokenizer.convert_tokens_to_ids
    S = SPECIAL_IDS
    assert [i for i, lab in zip(ids, labels) if lab != -100] == [S["\n"], w("red"), S["\n"], S["\n"], w("circle"),
                                                                  S["<|endoftext|>"]]


def _tiny_bpe(tmp_path, with_phi_layout=False):
    """A byte-level BPE tokenizer trained here on a few sentences, with the Phi-3 chat tokens added as
    special tokens, pad = eos = <|endoftext|> (as Phi-3.5), and a post-processor that adds <s> ...
    <|endoftext|> like the reference's add_bos_token/add_eos_token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["what color is the shape ?", "A chat between a curious user and an artificial intelligence assistant.",
              "The assistant gives helpful, detailed, and polite answers to the user's questions.", "red circle\n"] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in PHI_ADDED])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single=f"<s> $A <|endoftext|>",
                                                       special_tokens=[("<s>", bos), ("<|endoftext|>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>")


def test_any_hf_tokenizer_matches_reference_tokenization(tmp_path):
    """Our ids == the reference's: the whole template text tokenised in one call with BOS/EOS added
    by the tokenizer itself; and <image>/<|endofchunk|>/<pad> are added as the factory does."""
    hf = _tiny_bpe(tmp_path)
    n = len(hf)
    p = AKIProcessor(hf, image_size=32)
    assert (p.pad_token_id, p.image_token_id, p.endofchunk_token_id) == (n, n + 1, n + 2)
    q, a = "what color is the shape ?", "red circle"
    conv = [{"role": "user", "content": "<image>\n" + q}, {"role": "assistant", "content": a}]
    ref = hf(reference_sft_text(AKI_SYSTEM_MESSAGE, q, a))["input_ids"]
    ours, labels = p.encode_conversation(conv)
    assert ours == ref
    asst = ref.index(hf.convert_tokens_to_ids("<|assistant|>"))
    assert labels == [-100] * (asst + 1) + ref[asst + 1:]
    # the demo / eval prompt: same text up to "<|assistant|>\n", BOS, no EOS
    prompt = ("<|system|>\n" + AKI_SYSTEM_MESSAGE + "<|end|>\n" + "<|user|>\n<image>\n" + q + "<|end|>\n<|assistant|>\n")
    assert p.encode_conversation(conv[:1], add_generation_prompt=True)[0] == [hf.bos_token_id] + hf(
        prompt, add_special_tokens=False)["input_ids"]
    # from_pretrained on a local tokenizer directory (no aki_config.json: AKI-4B's 384 px)
    hf.save_pretrained(str(tmp_path / "tok"))
    p2 = AKIProcessor.from_pretrained(str(tmp_path / "tok"))
    assert p2.image_size == 384 and p2.encode_conversation(conv)[0] == ours


def test_phi35_layout_gives_the_released_ids():
    """A tokenizer laid out like Phi-3.5-mini-instruct's (32000 base tokens, 11 added, pad = eos =
    <|endoftext|> 32000): the factory's additions land at the released AKI-4B ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 32000)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in PHI_ADDED])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>",
                                 pad_token="<|endoftext|>", unk_token="<unk>")
    assert len(hf) == 32011 and hf.convert_tokens_to_ids("<|assistant|>") == 32001
    prepare_tokenizer(hf)
    ids = {t: hf.convert_tokens_to_ids(t) for t in ("<pad>", "<image>", "<|endofchunk|>")}
    assert ids == {"<pad>": 32011, "<image>": 32012, "<|endofchunk|>": 32013} and len(hf) == 32014
    c = AKIConfig.aki_4b(text_config={"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48,
                                                       "long_factor": [1.0] * 48}})
    p = AKIProcessor(hf, image_size=384)
    assert (c.image_token_id, c.pad_token_id, c.eos_token_id, c.assistant_token_id) == (
        p.image_token_id, p.pad_token_id, p.eos_token_id, p.assistant_token_id)
    assert (c.text_config["vocab_size"], c.text_config["bos_token_id"]) == (len(hf), hf.bos_token_id)
    assert prepare_tokenizer(hf) is hf and len(hf) == 32014  # idempotent


def test_tokenizer_without_chat_tokens_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>")),
                                 unk_token="<unk>", eos_token="<unk>")
    with pytest.raises(ValueError, match="chat tokens"):
        AKIProcessor(hf)
