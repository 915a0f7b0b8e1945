"""Version differences made explicit: transformers' mask-interface calling conventions and the
Triton interpreter's scalar conversion (older triton + NumPy >= 2.4).

The suite is meant to pass on the development versions (triton 3.9, transformers 5.23) and on the
GPU machines' (triton 3.6, transformers 5.17).
"""
import inspect
import os

import pytest
import torch


# ------------------------------------------------------------------------------ transformers mask interface
def _interface():
    pytest.importorskip("transformers")
    from mma_kernels.integrations.transformers import MMAMaskSpec, mma_mask_interface

    return MMAMaskSpec, mma_mask_interface


def _mask_fn(*args):  # what transformers passes as mask_function; the "mma" builder ignores it
    raise AssertionError("the mma mask builder must not evaluate mask_function")


@pytest.mark.parametrize("convention", ["q_length", "cache_position"])
def test_mask_interface_accepts_both_conventions(convention):
    """transformers 5.x calls the mask interface with q_length/q_offset/kv_offset; older releases with
    cache_position. Both give the same spec."""
    MMAMaskSpec, mma_mask_interface = _interface()
    pad = torch.ones(2, 9, dtype=torch.bool)
    pad[0, :2] = False
    common = dict(batch_size=2, kv_length=7, mask_function=_mask_fn, attention_mask=pad, dtype=torch.float32,
                  config=None, allow_is_causal_skip=True, use_vmap=False, device=torch.device("cpu"))
    if convention == "q_length":
        spec = mma_mask_interface(q_length=3, q_offset=4, kv_offset=0, **common)
    else:
        spec = mma_mask_interface(cache_position=torch.arange(4, 7), kv_offset=0, **common)
    assert isinstance(spec, MMAMaskSpec)
    assert (spec.batch_size, spec.q_length, spec.kv_length) == (2, 3, 7)
    assert torch.equal(spec.attention_mask, pad[:, :7])


@pytest.mark.parametrize("convention", ["q_length", "cache_position"])
def test_mask_interface_rejects_preallocated_caches_in_both_conventions(convention):
    _, mma_mask_interface = _interface()
    if convention == "q_length":
        bad_offset = dict(batch_size=1, q_length=1, kv_length=16, q_offset=3, kv_offset=0)
        # a StaticCache's offset may come as a tensor (to avoid graph breaks): still checked
        bad_tensor = dict(batch_size=1, q_length=1, kv_length=16, q_offset=torch.tensor(3), kv_offset=0)
        sliding = dict(batch_size=1, q_length=1, kv_length=4, q_offset=7, kv_offset=4)
    else:
        bad_offset = dict(batch_size=1, cache_position=torch.tensor([3]), kv_length=16, kv_offset=0)
        bad_tensor = bad_offset
        sliding = dict(batch_size=1, cache_position=torch.tensor([7]), kv_length=4, kv_offset=4)
    for kw in (bad_offset, bad_tensor):
        with pytest.raises(ValueError, match="StaticCache"):
            mma_mask_interface(mask_function=_mask_fn, attention_mask=None, **kw)
    # a sliding-window cache past its window (kv_offset > 0, queries still the last keys) is accepted: the
    # attention function fits the mask to the kept keys (tests/test_hf_generate.py checks the logits)
    spec = mma_mask_interface(mask_function=_mask_fn, attention_mask=None, **sliding)
    assert (spec.q_length, spec.kv_length) == (1, 4)


def test_mask_interface_matches_installed_transformers():
    """"mma" is registered in both interfaces, and every argument the installed transformers' own
    sdpa mask builder takes is accepted by name by the "mma" one (no TypeError on a version change)."""
    transformers = pytest.importorskip("transformers")
    from transformers import masking_utils
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    import mma_kernels  # noqa: F401  (registers "mma")
    from mma_kernels.integrations.transformers import mma_attention_forward, mma_mask_interface

    assert masking_utils.ALL_MASK_ATTENTION_FUNCTIONS["mma"] is mma_mask_interface
    assert ALL_ATTENTION_FUNCTIONS["mma"] is mma_attention_forward
    theirs = inspect.signature(masking_utils.sdpa_mask).parameters
    ours = inspect.signature(mma_mask_interface).parameters
    assert any(p.kind == p.VAR_KEYWORD for p in ours.values())
    assert "q_length" in theirs or "cache_position" in theirs, (
        f"transformers {transformers.__version__}: sdpa_mask has neither q_length nor cache_position; "
        f"update mma_mask_interface")
    spec = mma_mask_interface(**{
        n: (1 if n == "batch_size" else 4 if n in ("q_length", "kv_length") else 0 if n in ("q_offset", "kv_offset")
            else torch.arange(4) if n == "cache_position" else _mask_fn if n == "mask_function" else None)
        for n, p in theirs.items() if p.default is inspect.Parameter.empty or n in
        ("q_length", "kv_length", "q_offset", "kv_offset", "cache_position", "attention_mask")})
    assert (spec.q_length, spec.kv_length) == (4, 4)


# ------------------------------------------------------------------------------ triton interpreter
def test_interpreter_loop_over_reduced_bounds():
    """Older triton's interpreter (3.6) converts scalars with int(ndarray); a reduction's scalar is a
    1-element 1-D array there, which NumPy >= 2.4 refuses. triton_ops patches that (interpreter only)."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        pytest.skip("interpreter-only compat")
    triton = pytest.importorskip("triton")
    import triton.language as tl

    from mma_kernels.ops import triton_ops

    @triton.jit
    def _count(X, OUT, N: tl.constexpr):
        x = tl.load(X + tl.arange(0, N))
        lo = tl.min(x, 0)
        hi = tl.max(x, 0)
        total = 0
        for i in range(lo, hi):
            total += i
        tl.store(OUT, total)

    triton_ops._fix_interpreter_index()
    x = torch.tensor([5, 2, 9, 4], dtype=torch.int32)
    out = torch.zeros(1, dtype=torch.int32)
    _count[(1,)](x, out, N=4)
    assert int(out) == sum(range(2, 9))
