"""MMAttention: the nn.Module core, against the dense reference."""
import pytest
import torch

import mma_kernels
from mma_kernels import MMAMask, MMAttention
from mma_kernels.reference import mma_attention_reference


def _qkv(B=2, Hq=4, Hkv=2, L=24, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda H: torch.randn(B, H, L, D, generator=g, requires_grad=True)  # noqa: E731
    return mk(Hq), mk(Hkv), mk(Hkv)


def _ids(B=2, L=24):
    mod = torch.zeros(B, L, dtype=torch.long)
    mod[:, 3:9] = 1
    mod[1, :2] = -1
    seg = torch.zeros(B, L, dtype=torch.long)
    seg[:, 14:] = 1
    return mod, seg


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_module_matches_reference(backend):
    q, k, v = _qkv()
    mod, seg = _ids()
    attn = MMAttention(scale=0.2, backend=backend)
    out = attn(q, k, v, modality_ids=mod, segment_ids=seg)
    ref = mma_attention_reference(q, k, v, MMAMask(mod, seg), scale=0.2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    grads_ref = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # prebuilt mask: same
    torch.testing.assert_close(attn(q, k, v, MMAMask(mod, seg)), out, atol=0, rtol=0)
    assert "policy=mma" in repr(attn)


def test_module_in_a_model_and_errors():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(32, 96)
            self.attn = MMAttention(policy="prefix")

        def forward(self, x, mask):
            q, k, v = self.qkv(x).unflatten(-1, (3, 1, 32)).permute(2, 0, 3, 1, 4)
            return self.attn(q, k, v, mask)

    mod, seg = _ids()
    blk = Block()
    x = torch.randn(2, 24, 32)
    y = blk(x, MMAMask(mod, seg, policy="prefix"))
    assert y.shape == (2, 1, 24, 32) and torch.isfinite(y).all()
    assert y[1, :, :2].abs().max() == 0  # padding queries give 0
    with pytest.raises(ValueError, match="policy"):
        blk(x, MMAMask(mod, seg, policy="mma"))
    with pytest.raises(ValueError, match="scale"):
        MMAttention(scale=-1.0)
    with pytest.raises(ValueError, match="backend"):
        MMAttention(backend="cuda")
    with pytest.raises(ValueError, match="policy"):
        MMAttention(policy="bogus")
    with pytest.raises(TypeError, match="mask"):
        MMAttention()(*_qkv(), mask=mod)
    with pytest.raises(ValueError, match="not both"):
        MMAttention()(*_qkv(), MMAMask(mod), modality_ids=mod)
    assert mma_kernels.MMAttention is MMAttention
