"""Every bad input raises a clear error naming the argument and the value, before any launch."""
import pytest
import torch

from mma_kernels import MMAMask, mma_attention


def ids(L=8, B=1):
    return torch.zeros(B, L, dtype=torch.long)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(modality_ids=torch.zeros(8, dtype=torch.long)), ValueError, ["modality_ids", "[B, Lk]", "(8,)"]),
        (dict(modality_ids=torch.zeros(1, 8)), TypeError, ["modality_ids", "integer", "float32"]),
        (dict(modality_ids=[[0, 1]]), TypeError, ["modality_ids", "list"]),
        (dict(modality_ids=torch.tensor([[0, -2, 1]])), ValueError, ["modality_ids", "-2"]),
        (dict(modality_ids=torch.tensor([[0, 31, 1]])), ValueError, ["modality_ids", "31"]),
        (dict(modality_ids=ids(), segment_ids=torch.zeros(1, 7, dtype=torch.long)), ValueError, ["segment_ids", "(1, 7)"]),
        (dict(modality_ids=ids(), segment_ids=torch.zeros(1, 8)), TypeError, ["segment_ids", "float32"]),
        (dict(modality_ids=ids(), document_ids=torch.zeros(2, 8, dtype=torch.long)), ValueError, ["document_ids", "(2, 8)"]),
        (dict(modality_ids=ids(), segment_ids=torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2]])), ValueError, ["segment_ids", "value 0", "contiguous"]),
        (dict(modality_ids=ids(), document_ids=torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0]])), ValueError, ["document_ids", "value 0", "contiguous"]),
        (dict(modality_ids=ids(), segment_ids=torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]),
              document_ids=torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])), ValueError, ["segment_ids", "spans two documents", "position 2"]),
        (dict(modality_ids=ids(), policy="mutual"), ValueError, ["policy", "'mutual'"]),
        (dict(modality_ids=ids(), policy=[(1, 40)]), ValueError, ["policy", "40"]),
        (dict(modality_ids=ids(), policy=[(1,)]), TypeError, ["policy", "(1,)"]),
        (dict(modality_ids=ids(), policy=5), TypeError, ["policy", "int"]),
    ],
)
def test_mask_errors(kwargs, exc, words):
    with pytest.raises(exc) as e:
        MMAMask(**kwargs)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def _rows(text):
    return torch.tensor([[c == "1" for c in line.split()] for line in text.strip().splitlines()])


@pytest.mark.parametrize("mod, seg, expected", [
    # right padding whose segment id repeats an earlier one: padding is skipped, segment 0 stays one run
    ([0, 1, 0, 0, -1, -1], [0, 0, 0, 1, 0, 0], """
        1 . . . . .
        1 1 1 . . .
        1 1 1 . . .
        1 1 1 1 . .
        . . . . . .
        . . . . . ."""),
    # padding inside segment 0 carrying another id: the image still sees the text after it (3), not segment 1 (4)
    ([0, 1, -1, 0, 0, -1], [0, 0, 7, 0, 1, 0], """
        1 . . . . .
        1 1 . 1 . .
        . . . . . .
        1 1 . 1 . .
        1 1 . 1 1 .
        . . . . . ."""),
])
def test_padding_does_not_break_runs(mod, seg, expected):
    mask = MMAMask(torch.tensor([mod]), torch.tensor([seg]))
    assert torch.equal(mask.to_dense()[0], _rows(expected))


def qkv(B=1, Hq=4, Hkv=2, Lq=8, Lk=8, D=32, dtype=torch.float32):
    return torch.randn(B, Hq, Lq, D, dtype=dtype), torch.randn(B, Hkv, Lk, D, dtype=dtype), torch.randn(B, Hkv, Lk, D, dtype=dtype)


MASK8 = MMAMask(ids(8))


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: (qkv()[0][0], *qkv()[1:], MASK8), ValueError, ["q", "rank 4", "(4, 8, 32)"]),
        (lambda: (*qkv(dtype=torch.float64), MASK8), TypeError, ["q", "float64"]),
        (lambda: (qkv()[0], qkv()[1].half(), qkv()[2], MASK8), TypeError, ["k", "float16", "float32"]),
        (lambda: (qkv()[0], qkv()[1], qkv(Lk=9)[2], MASK8), ValueError, ["k, v", "shapes differ"]),
        (lambda: (*qkv(Hq=3, Hkv=2), MASK8), ValueError, ["heads 2", "3"]),
        (lambda: (*qkv(D=8), MASK8), ValueError, ["head dim 8", "16..256"]),
        (lambda: (*qkv(D=320), MASK8), ValueError, ["head dim 320"]),
        (lambda: (*qkv(Lq=9, Lk=8), MASK8), ValueError, ["query length 9", "key length 8"]),
        (lambda: (*qkv(Lk=9, Lq=9), MASK8), ValueError, ["mask", "8 positions", "Lk=9"]),
        (lambda: (*qkv(B=2), MASK8), ValueError, ["mask", "batch size 1", "2"]),
        (lambda: (*qkv(), "causal"), TypeError, ["mask", "MMAMask", "str"]),
        (lambda: (qkv()[0], qkv(B=2)[1], qkv(B=2)[2], MASK8), ValueError, ["k", "batch size 2"]),
    ],
)
def test_attention_errors(make, exc, words):
    with pytest.raises(exc) as e:
        mma_attention(*make())
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_scale_and_backend():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="scale"):
        mma_attention(q, k, v, MASK8, scale=-1.0)
    with pytest.raises(ValueError, match="backend"):
        mma_attention(q, k, v, MASK8, backend="cuda")


def test_mask_device_mismatch_is_reported():
    q, k, v = qkv()
    mask = MMAMask(ids(8))
    mask.device = torch.device("meta")  # simulate a mask built on another device
    with pytest.raises(ValueError, match="mask: built on device meta"):
        mma_attention(q, k, v, mask)
