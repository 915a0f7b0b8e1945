"""FlexAttention with a mask_mod written from the raw ids: a second, independent reference."""
import pytest
import torch

import oracle
from helpers import make_layout, make_qkv
from mma_kernels import MMAMask, mma_attention
from mma_kernels.ops import triton_ops
from mma_kernels.reference import flex_mask_mod

flex = pytest.importorskip("torch.nn.attention.flex_attention")


def turns_ids():
    """Two batch rows in which the last 22 query rows (of 64) hold image and modality-2 rows that
    look ahead: row 0 is two turns [text, mod-2, image, question | answer] x 2; row 1 packs two
    documents behind left padding, modality 2 after the images."""
    mod0 = [0] * 4 + [2] * 6 + [1] * 8 + [0] * 10 + [0] * 6 + [1] * 10 + [2] * 4 + [0] * 8 + [0] * 8
    seg0 = [0] * 28 + [1] * 6 + [2] * 22 + [3] * 8
    mod1 = [-1] * 5 + [0] * 3 + [1] * 6 + [0] * 8 + [0] * 4 + [0] * 2 + [1] * 7 + [2] * 9 + [0] * 12 + [0] * 8
    seg1 = [0] * 5 + [0] * 17 + [1] * 4 + [2] * 30 + [3] * 8
    doc1 = [0] * 26 + [1] * 38
    t = lambda x: torch.tensor(x)  # noqa: E731
    return t([mod0, mod1]), t([seg0, seg1]), t([[0] * 64, doc1])


@pytest.mark.parametrize("policy", [[(1, 0), (2, 0), (1, 2)], [(2, 1), (2, 2), (0, 2)], "prefix"])
@pytest.mark.parametrize("Lq", [64, 60, 22])  # 60: a block of query rows ends between an image and its text
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_against_flex_explicit_pairs_look_ahead(policy, Lq, backend, monkeypatch):
    """Explicit pairs, modality-2 look-ahead, and short queries whose rows still look ahead.
    16 x 16 tiles: look-ahead keys then lie in key blocks past the query block's own rows."""
    monkeypatch.setattr(triton_ops, "INTERPRET_BLOCKS", {"fwd": (16, 16), "dq": (16, 16), "dkdv": (16, 16)})
    mod, seg, doc = turns_ids()
    Lk = mod.shape[1]
    ahead = oracle.allowed(mod, seg, doc, policy, q_len=Lq) & ~oracle.allowed(mod, seg, doc, "causal", q_len=Lq)
    from_mod2 = ahead & (mod[:, Lk - Lq:, None] == 2)
    assert from_mod2.any(), "the query rows must hold modality-2 rows that look ahead"
    _compare_with_flex(mod, seg, doc, policy, 2, 1, Lq, Lk, backend)


@pytest.mark.parametrize("layout, policy, Hq, Hkv, Lq, Lk", [
    ("multi_turn", "mma", 4, 2, 130, 130),
    ("packed", "mma", 2, 2, 97, 97),
    ("left_pad", "bidirectional_image", 4, 1, 64, 64),
    ("three_modal", [(1, 0), (2, 1)], 2, 1, 33, 97),
    ("right_pad", "prefix", 2, 2, 70, 70),
])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_against_flex(layout, policy, Hq, Hkv, Lq, Lk, backend):
    """Forward only: FlexAttention has no backward on CPU (tests/test_kernels_cuda.py checks it there)."""
    mod, seg, doc = make_layout(layout, 2, Lk, seed=9)
    _compare_with_flex(mod, seg, doc, policy, Hq, Hkv, Lq, Lk, backend)


def _compare_with_flex(mod, seg, doc, policy, Hq, Hkv, Lq, Lk, backend):
    B, D = mod.shape[0], 64
    mask = MMAMask(mod, seg, doc, policy=policy)
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lk, D, torch.float32, seed=4)
    mask_mod = flex_mask_mod(mod, seg, doc, policy, q_offset=Lk - Lq)
    block_mask = flex.create_block_mask(mask_mod, B, None, Lq, Lk, device="cpu")
    q, k, v = (t.detach() for t in (q, k, v))
    ref, ref_lse = flex.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=Hq != Hkv, return_lse=True)
    out, lse = mma_attention(q, k, v, mask, backend=backend, return_lse=True)
    valid = (mod[:, Lk - Lq:] != -1)[:, None, :].expand_as(lse)
    assert (out - ref)[valid].abs().max() < 2e-5
    assert (lse - ref_lse)[valid].abs().max() < 2e-5
    assert (out[~valid] == 0).all()
