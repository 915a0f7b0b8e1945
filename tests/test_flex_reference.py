"""FlexAttention with a mask_mod written from the raw ids: a second, independent reference."""
import pytest
import torch

from helpers import make_layout, make_qkv
from mma_kernels import MMAMask, mma_attention
from mma_kernels.reference import flex_mask_mod

flex = pytest.importorskip("torch.nn.attention.flex_attention")


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
    B, D = 2, 64
    mod, seg, doc = make_layout(layout, B, Lk, seed=9)
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
