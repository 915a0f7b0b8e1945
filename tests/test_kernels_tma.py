"""K/V tiles through TMA tensor descriptors (`triton_ops.TMA`) and through pointers, in the interpreter.

Under the interpreter the default ("auto") takes the descriptor path that sm_90 runs, so the whole suite
tests it; here both load forms run the same cases against the fp64 oracle, each launch is checked to have
taken the path asked for, and tensors a descriptor cannot serve (16-byte rule) fall back to pointers.
"""
import pytest
import torch

from helpers import make_layout
from mma_kernels import MMAMask, mma_attention
from mma_kernels.ops import triton_ops
from test_kernels import check_case


@pytest.fixture
def launches(monkeypatch):
    """The TMA flag of every fwd / dQ launch."""
    seen = []
    orig = triton_ops._launch

    def spy(kind, grid_len, grid_heads, args, **meta):
        seen.append((kind, meta.get("TMA")))
        return orig(kind, grid_len, grid_heads, args, **meta)

    monkeypatch.setattr(triton_ops, "_launch", spy)
    return seen


def _flags(seen):
    return {flag for kind, flag in seen if kind in ("fwd", "dq")}


@pytest.mark.parametrize("mode", ["off"])  # "auto" (descriptors) is what the rest of the suite runs
@pytest.mark.parametrize("dtype, D, Lq, Lk, Hq, Hkv, layout", [
    (torch.bfloat16, 64, 97, 97, 4, 2, "multi_turn"),
    (torch.float16, 80, 97, 97, 4, 1, "packed"),
    (torch.bfloat16, 96, 40, 97, 2, 2, "left_pad"),
    (torch.float32, 128, 33, 33, 2, 1, "multi_turn"),
])
def test_both_load_forms_match_the_oracle(monkeypatch, launches, mode, dtype, D, Lq, Lk, Hq, Hkv, layout):
    """Level 1 (a padded mask: masked tiles keep pointer loads for V) or 2 (no padding: descriptors there too)."""
    monkeypatch.setattr(triton_ops, "TMA", mode)
    mod, seg, doc = make_layout(layout, 2, Lk, seed=3)
    check_case("triton", dtype, B=2, Hq=Hq, Hkv=Hkv, Lq=Lq, Lk=Lk, D=D, seed=3, ids=(mod, seg, doc))
    padded = bool((mod == -1).any())
    assert _flags(launches) == {0 if mode == "off" else 1 if padded else 2}


@pytest.mark.parametrize("padded, gqa", [(False, "auto"), (False, "loop"), (True, "auto")])
def test_both_tma_levels_on_one_layout(monkeypatch, launches, padded, gqa):
    """The same no-padding layout at level 2, and with one padding token added (level 1). Head dim 96 (a
    head-dim block of 128): at level 2 the dK/dV kernel reads q / dO through descriptors too, with one query
    head per program (GQA "split", the default there) or looping over the group."""
    monkeypatch.setattr(triton_ops, "DKDV_GQA", gqa)
    mod, seg, doc = make_layout("multi_turn", 2, 97, seed=4)
    mod[mod == -1] = 0
    if padded:
        mod[1, 50] = -1
    check_case("triton", torch.bfloat16, B=2, Hq=4, Hkv=2, Lq=97, Lk=97, D=96, seed=4, ids=(mod, seg, doc))
    assert _flags(launches) == {1 if padded else 2}
    assert {flag for kind, flag in launches if kind == "dkdv"} == {1 if padded else 2}


@pytest.mark.parametrize("blocks", [(16, 64), (64, 16)])
def test_descriptor_tiles_past_the_last_key(monkeypatch, launches, blocks):
    """Key tiles that run past Lk and head dims under the block: the copy engine's zero fill."""
    monkeypatch.setattr(triton_ops, "INTERPRET_BLOCKS", {"fwd": blocks, "dq": blocks, "dkdv": blocks[::-1]})
    check_case("triton", torch.float16, B=2, Hq=2, Hkv=1, Lq=97, Lk=97, D=80, layout="packed", seed=7)
    assert _flags(launches) <= {1, 2} and _flags(launches)


def test_padding_values_stay_inert_with_descriptors(launches):
    """Padding keys holding NaN / inf inside a descriptor-loaded tile never reach an output or gradient."""
    mod, seg, doc = make_layout("left_pad", 2, 70)
    mod[1, 30:34] = -1  # padding inside a document too
    mask = MMAMask(mod, seg, doc)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 70, 64, generator=g).to(torch.bfloat16) for _ in range(3))
    pad = (mod == -1)[:, None, :, None].expand_as(k)
    kb, vb = k.masked_fill(pad, float("nan")), v.masked_fill(pad, float("inf"))
    outs = []
    for kk, vv in ((k, v), (kb, vb)):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, kk, vv))
        out = mma_attention(qq, kk, vv, mask, backend="triton")
        out.float().square().sum().backward()
        outs.append((out, qq.grad, kk.grad, vv.grad))
    for a, b in zip(*outs):
        assert torch.isfinite(b).all() and torch.equal(a, b)
    assert _flags(launches) == {1}


@pytest.mark.parametrize("what", ["row_stride", "start"])
def test_tensors_a_descriptor_cannot_serve_take_pointers(monkeypatch, launches, what):
    """A row stride that is not a multiple of 16 bytes (bf16 head dim 20) or a start off 16-byte alignment:
    the launcher takes pointer loads, with the results of the same values where a descriptor serves (or of
    pointer loads forced)."""
    g = torch.Generator().manual_seed(1)
    mod, seg, doc = make_layout("multi_turn", 1, 45)
    mask = MMAMask(mod, seg, doc)
    if what == "row_stride":
        q, k, v = (torch.randn(1, 2, 45, 20, generator=g).to(torch.bfloat16) for _ in range(3))
    else:
        buf = torch.randn(3, 1 * 2 * 45 * 32 + 1, generator=g).to(torch.bfloat16)
        q, k, v = (b[1:].view(1, 2, 45, 32) for b in buf)  # 2 bytes past an aligned start
    assert not triton_ops._tma_ok(k, v)
    out = mma_attention(q, k, v, mask, backend="triton")
    assert _flags(launches) == {0}
    if what == "start":
        same = mma_attention(q.clone(), k.clone(), v.clone(), mask, backend="triton")  # aligned copies: TMA
        assert len(_flags(launches)) == 2 and 0 in _flags(launches)
    else:
        monkeypatch.setattr(triton_ops, "TMA", "off")
        same = mma_attention(q, k, v, mask, backend="triton")
    assert torch.equal(out, same)


def test_mode_is_checked(monkeypatch):
    monkeypatch.setattr(triton_ops, "TMA", "sometimes")
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="triton_ops.TMA"):
        triton_ops._tma_ok(q, q)
