"""torch.compile: the attention is a torch.library op (fake impl + autograd), so no graph break."""
import pytest
import torch

from fuzz_cases import make_case
from mma_kernels import MMAMask, MMAttention, build_mma_mask, mma_attention
from mma_kernels.ops.library import attention_fwd
from oracle_check import check_against_oracle


def _case(B=2, Hq=4, Hkv=2, L=32, D=32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g, requires_grad=True) for H in (Hq, Hkv, Hkv))
    mod = torch.zeros(B, L, dtype=torch.long)
    mod[:, 4:12] = 1
    mod[0, :3] = -1
    seg = torch.zeros(B, L, dtype=torch.long)
    seg[:, 20:] = 1
    return q, k, v, MMAMask(mod, seg)


def test_opcheck():
    q, k, v, mask = _case(L=16)
    torch.library.opcheck(attention_fwd, (q, k, v, mask.meta, mask.padcum, 0.25, "torch"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_compiled_fullgraph_forward_backward(backend="aot_eager"):
    q, k, v, mask = _case()
    attn = MMAttention()
    torch._dynamo.reset()

    def f(q, k, v, mask):
        return (attn(q, k, v, mask) * 2).sin()

    cf = torch.compile(f, backend=backend, fullgraph=True)  # fullgraph: any graph break raises
    out, ref = cf(q, k, v, mask), f(q, k, v, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("Hq, Hkv, Lq", [(4, 2, 32), (4, 1, 13), (2, 2, 1)])
def test_compiled_matches_fp64_oracle(backend, Hq, Hkv, Lq):
    """The compiled op (torch.library custom op + its autograd) against the independent fp64 oracle,
    gradients through out and lse, with padding queries/keys, GQA and Lq < Lk (flash-attn rule)."""
    mod = torch.zeros(2, 32, dtype=torch.long)
    mod[:, 4:12] = 1
    mod[0, :3] = -1
    mod[1, 25:27] = -1
    mod[1, 29:31] = 1
    seg = torch.zeros(2, 32, dtype=torch.long)
    seg[:, 20:] = 1
    torch._dynamo.reset()
    compiled = torch.compile(mma_attention, backend="aot_eager", fullgraph=True)
    check_against_oracle(make_case(mod, seg, Hq=Hq, Hkv=Hkv, Lq=Lq, dtype=torch.float32, seed=Hq + Lq, with_lse=True),
                         backend, op=compiled)


def test_compiled_hf_model_no_graph_break():
    transformers = pytest.importorskip("transformers")
    from test_hf_helpers import model_pair

    from mma_kernels import apply_mma

    _, model = model_pair("llama")
    apply_mma(model)
    ids = torch.randint(10, 90, (2, 16))
    mod = torch.zeros(2, 16, dtype=torch.long)
    mod[:, 2:6] = 1
    seg = torch.zeros_like(mod)
    seg[:, 10:] = 1
    mask = build_mma_mask(16, mod, seg)  # built outside the compiled region
    torch._dynamo.reset()
    explain = torch._dynamo.explain(model)(ids, mma_mask=mask, labels=ids)
    assert explain.graph_break_count == 0, explain.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(ids, mma_mask=mask, labels=ids)
    ref = model(ids, modality_ids=mod, segment_ids=seg, labels=ids)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
