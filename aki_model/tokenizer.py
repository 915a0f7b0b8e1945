"""A small word-level tokenizer built in code (no downloads), behaving like a Hugging Face tokenizer.

It knows the special tokens of AKI-4B's Phi-3.5 tokenizer that the AKI template uses (``<s>`` BOS,
``<|endoftext|>`` EOS, ``<|system|>``, ``<|user|>``, ``<|assistant|>``, ``<|end|>``), the tokens AKI
adds (``<pad>``, ``<image>``, ``<|endofchunk|>``), a newline token, the words of the synthetic task
(`aki_model.data.WORDS`) and a few hundred common English words; anything else becomes ``<unk>``.
Text is lower-cased and split on whitespace and punctuation.
"""
from __future__ import annotations

from typing import Iterable, List, Optional

SPECIAL_TOKENS = ["<pad>", "<unk>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<image>", "\n",
                  "<s>", "<|endofchunk|>"]
SPECIAL_IDS = {t: i for i, t in enumerate(SPECIAL_TOKENS)}

_COMMON = """
a an the this that these those it its is are was were be been am do does did has have had can could will would
should may might must i you he she we they me him her us them my your our their what which who whom whose where
when why how yes no not and or but if then than so of in on at to from by with without for about into over under
above below left right top bottom middle center up down there here one two three four five six seven eight nine ten
zero many much more most less few some any all each every other same different color colour colors shape shapes
image images picture photo see look show tell describe answer question please thank thanks hello hi
big small large little tiny round dark light bright background object objects thing things count number
red green blue yellow purple orange white black gray grey pink brown cyan
circle square triangle rectangle star dot line
first second third last before after between both either neither only also just very
helpful assistant user system you're i'm what's there's
""".split()
_PUNCT = list(".,?!:;'\"()-")
_DIGITS = [str(d) for d in range(10)]


def vocabulary(extra_words: Iterable[str] = ()) -> List[str]:
    """The token list, ids in order: special tokens first (their ids are fixed, see SPECIAL_IDS)."""
    from .data import WORDS

    out: List[str] = list(SPECIAL_TOKENS)
    seen = set(out)
    for w in list(_PUNCT) + _DIGITS + list(WORDS) + _COMMON + list(extra_words):
        w = w.lower()
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def build_tokenizer(extra_words: Iterable[str] = (), pad_to_multiple_of: int = 64):
    """Returns a `transformers.PreTrainedTokenizerFast` (vocab padded to a multiple of 64)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = vocabulary(extra_words)
    n = len(words)
    if pad_to_multiple_of:
        n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
    words += [f"<|reserved_{i}|>" for i in range(n - len(words))]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|endoftext|>",
        bos_token="<s>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<pad>", "<unk>", "<|endoftext|>", "<s>")],
        padding_side="right",
        model_max_length=4096,
    )


def check_special_ids(tokenizer, ids: Optional[dict] = None) -> None:
    """Raise if `tokenizer` does not map the chat tokens to `ids` (default: SPECIAL_IDS)."""
    ids = SPECIAL_IDS if ids is None else ids
    for tok, i in ids.items():
        got = tokenizer.convert_tokens_to_ids(tok)
        if got != i:
            raise ValueError(f"tokenizer maps {tok!r} to {got}, expected {i}")
