"""The decode path (split-KV with GQA packing, `mma_kernels/ops/decode_ops.py`) against the fp64 oracle.

Through the Triton interpreter: Lq 1, 2, 7, 16; Lk from 1 to a few thousand, lengths that are not multiples of
the split or block sizes; GQA ratios 1, 4, 8 (8 with 16 rows: two head chunks per KV head); head dims 64, 80,
128; left padding, packed documents, windows, groups, look-ahead among the new rows; every split count from 1
to more splits than key blocks. Tolerance: the flash-attn rule against plain PyTorch in the same dtype
(tests/helpers.py: assert_rule). Every check asserts the decode kernel ran (`decode_ops.COUNTS`).
"""
import random

import pytest
import torch

import oracle
from fuzz_cases import make_case, oracle_policy, random_case, user_policy
from helpers import assert_rule, make_layout
from mma_kernels import MMAMask, mma_attention
from mma_kernels.ops import decode_ops, triton_ops
from mma_kernels.reference import mma_attention_reference
from oracle_check import check_against_oracle, make_inputs, plain_yardstick, scale_of


@pytest.fixture(autouse=True)
def _knobs(monkeypatch):
    monkeypatch.setattr(decode_ops, "DECODE", "auto")
    monkeypatch.setattr(decode_ops, "NUM_SPLITS", None)


def _mask(case):
    return MMAMask(case["mod"], case["seg"], case["doc"], policy=user_policy(case["policy"]), group_ids=case["grp"],
                   group_policy=user_policy(case["group_policy"]))


def check_forward(case, splits=None, poison=False):
    """out and lse of one forward (no grad) within the flash-attn rule of the fp64 oracle, through the decode
    kernel (and the merge when split); padding rows exactly 0 / -inf. Returns (out, lse)."""
    q, k, v, dout, _ = make_inputs(case, poison=poison)
    mask = _mask(case)
    before = dict(decode_ops.COUNTS)
    with torch.no_grad():
        out, lse = mma_attention(q, k, v, mask, scale=case["scale"], return_lse=True, backend="triton",
                                 window=case["window"])
    p = decode_ops.plan(case["B"], case["Hq"], case["Hkv"], case["Lq"], case["Lk"], case["D"], q.device,
                        mask.effective_window(case["window"]))
    assert decode_ops.COUNTS["decode"] == before.get("decode", 0) + 1, "the decode kernel did not run"
    assert decode_ops.COUNTS["merge"] == before.get("merge", 0) + (p.splits > 1)
    if splits is not None:
        assert p.splits == splits
    ok = oracle.allowed(case["mod"], case["seg"], case["doc"], oracle_policy(case["policy"]), q_len=case["Lq"],
                        grp=case["grp"], group_policy=oracle_policy(case["group_policy"]), window=case["window"])
    if poison:  # the yardsticks need finite inputs: padding rows/keys are never allowed, zero them
        q, k, v = make_inputs(case)[:3]
    ref = oracle.attention64(q.detach(), k.detach(), v.detach(), ok, scale_of(case))
    plain = plain_yardstick(q, k, v, ok, scale_of(case), dout, None)[:2]
    for what, a, r, pl in zip(("out", "lse"), (out, lse), ref, plain):
        assert_rule(what, a, r, pl, case["dtype"])
    B, Hq, Lq, Lk = (case[x] for x in ("B", "Hq", "Lq", "Lk"))
    pad_q = (case["mod"][:, Lk - Lq:] == -1)[:, None].expand(B, Hq, Lq)
    assert (out[pad_q] == 0).all() and torch.isneginf(lse[pad_q]).all()
    assert torch.isfinite(lse[~pad_q]).all() and torch.isfinite(out).all()
    return out, lse


def _case(layout, B, Hq, Hkv, Lq, Lk, D, dtype, seed=0, policy="mma", window=None):
    mod, seg, doc = make_layout(layout, B, Lk, seed=seed)
    return make_case(mod, seg, doc, policy, Hq=Hq, Hkv=Hkv, Lq=Lq, D=D, dtype=dtype, seed=seed + 1, window=window)


@pytest.mark.parametrize("layout, B, Hq, Hkv, Lq, Lk, D, dtype", [
    ("multi_turn", 1, 1, 1, 1, 1, 64, torch.float32),        # one key
    ("multi_turn", 2, 2, 2, 2, 3, 80, torch.float16),        # Lk < one block
    ("left_pad", 2, 4, 1, 1, 17, 128, torch.bfloat16),       # batched generate: left padding, GQA 4
    ("packed", 2, 8, 1, 7, 100, 64, torch.float16),          # packed documents, GQA 8
    ("multi_image", 1, 8, 1, 16, 133, 64, torch.bfloat16),   # 16 rows x 8 heads: two head chunks
    ("single_image", 1, 4, 1, 16, 257, 80, torch.float32),   # 16 rows, GQA 4, D 80
    ("three_modal", 2, 2, 1, 2, 333, 128, torch.float16),
    ("right_pad", 2, 2, 2, 7, 61, 64, torch.float32),        # padding query rows
    ("left_pad", 1, 8, 2, 1, 1000, 128, torch.bfloat16),     # GQA 4, a thousand keys
    ("packed", 1, 1, 1, 2, 2049, 64, torch.float16),         # 2049 keys (no multiple of 16 or the split)
])
def test_matches_oracle(layout, B, Hq, Hkv, Lq, Lk, D, dtype):
    check_forward(_case(layout, B, Hq, Hkv, Lq, Lk, D, dtype, seed=Lk + Lq))


def test_every_split_count(monkeypatch):
    """5 key blocks of 16 (Lk = 70, the last one partial): 1 (the kernel writes the output itself) to 8
    splits (3 of them empty); every count within the rule, and all equal up to rounding."""
    case = _case("multi_image", 1, 4, 1, 2, 70, 64, torch.float32, seed=3)
    outs = []
    for s in range(1, 9):
        monkeypatch.setattr(decode_ops, "NUM_SPLITS", s)
        outs.append(check_forward(case, splits=s)[0])
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-6, rtol=0)


def _lookahead_ids(Lk, n_img=3, q_len=3):
    """Text, an image run and its question among the last rows, then <|assistant|> and one answer token:
    the image rows look ahead at the question keys after them (still inside Lk)."""
    mod = torch.zeros(1, Lk, dtype=torch.long)
    seg = torch.zeros(1, Lk, dtype=torch.long)
    a = Lk - 2 - q_len - n_img
    mod[0, a:a + n_img] = 1
    seg[0, -1] = 1  # the answer token: a segment of its own
    return mod, seg


@pytest.mark.parametrize("policy, Lq", [("mma", 7), ("mma", 16), ("prefix", 2), ("bidirectional_image", 7)])
def test_lookahead_among_new_rows(monkeypatch, policy, Lq):
    """Query rows that are images (or anything under "prefix") see later keys of their segment: exact."""
    mod, seg = _lookahead_ids(90)
    monkeypatch.setattr(decode_ops, "NUM_SPLITS", 3)
    check_forward(make_case(mod, seg, None, policy, Hq=4, Hkv=1, Lq=Lq, D=64, dtype=torch.float16, seed=5))


@pytest.mark.parametrize("window, Lq, splits", [(1, 1, 2), (5, 7, 3), (40, 16, 4), (150, 2, 1)])
def test_windows(monkeypatch, window, Lq, splits):
    """A sliding window cuts the causal part (and with it the key range the splits share); look-ahead
    keys are never cut."""
    mod, seg = _lookahead_ids(300)
    monkeypatch.setattr(decode_ops, "NUM_SPLITS", splits)
    check_forward(make_case(mod, seg, None, "mma", Hq=2, Hkv=1, Lq=Lq, D=64, dtype=torch.float32, seed=window,
                            window=window), splits=splits)


def test_groups_and_documents(monkeypatch):
    """A second mutual level (Gemma-3-style image groups) and packed documents with left padding."""
    mod, seg, doc = make_layout("packed", 2, 80, seed=2)
    mod[0, :5] = -1
    mod[1, 70:75] = 1  # an image run among the last rows: its group sees itself both ways
    grp = torch.arange(80).expand(2, 80).clone()
    grp[1, 70:75] = 70
    monkeypatch.setattr(decode_ops, "NUM_SPLITS", 2)
    check_forward(make_case(mod, seg, doc, "mma", Hq=4, Hkv=2, Lq=9, D=64, dtype=torch.bfloat16, seed=7, grp=grp))


def test_padding_is_inert():
    """NaN / inf in K/V at padding keys and in q at padding rows reach nothing (the same bits as clean)."""
    mod, seg, doc = make_layout("left_pad", 2, 60, seed=1)
    mod[1, 57] = -1  # a padding query row among the new rows
    case = make_case(mod, seg, doc, "mma", Hq=4, Hkv=1, Lq=4, D=64, dtype=torch.float16, seed=2)
    clean = check_forward(case)
    dirty = check_forward(case, poison=True)
    for a, b in zip(clean, dirty):
        assert torch.equal(a, b)


def test_random_cases(monkeypatch):
    """Seeded random layouts (modalities 0..3, policies, groups, windows, padding) with Lq <= 16 and a random
    split count."""
    rng = random.Random("decode")
    failures = []
    for n in range(8):
        case = random_case(rng, max_L=48, max_bh=8)
        case["Lq"] = rng.randint(1, min(16, case["Lk"]))
        splits = rng.randint(1, 5)
        monkeypatch.setattr(decode_ops, "NUM_SPLITS", splits)
        try:
            check_forward(case, splits=splits)
        except AssertionError as e:
            failures.append(f"case {n} splits={splits}: {e}")
    assert not failures, "\n".join(failures[:3])


def test_backward_runs_the_prefill_kernels(monkeypatch):
    """A gradient through a decode forward is exact: the backward runs the prefill's dQ and dK/dV kernels from
    the decode's out, lse and (fp32) row statistics (fp64 oracle, flash-attn rule, through out and lse)."""
    launched, launch = [], triton_ops._launch
    monkeypatch.setattr(triton_ops, "_launch",
                        lambda kind, *a, **kw: (launched.append(kind), launch(kind, *a, **kw))[-1])
    monkeypatch.setattr(decode_ops, "NUM_SPLITS", 3)
    for dtype in (torch.float32, torch.bfloat16):
        before = decode_ops.COUNTS["decode"]
        mod, seg = _lookahead_ids(50)
        mod[0, :3] = -1
        check_against_oracle(make_case(mod, seg, None, "mma", Hq=4, Hkv=2, Lq=7, D=32, dtype=dtype, seed=9,
                                       with_lse=True), "triton")
        assert decode_ops.COUNTS["decode"] == before + 1
    assert launched == ["dq", "dkdv"] * 2  # no prefill forward


def test_dispatch(monkeypatch):
    """Lq <= 16 takes the decode path under backend="triton"; Lq = 17, DECODE = "off" and the CPU path do not."""
    mod, seg, doc = make_layout("multi_turn", 1, 40, seed=0)
    mask = MMAMask(mod, seg, doc)
    k = torch.randn(1, 2, 40, 32)
    v = torch.randn(1, 2, 40, 32)
    for Lq, backend, mode, taken in [(16, "triton", "auto", True), (1, "triton", "auto", True),
                                     (17, "triton", "auto", False), (1, "triton", "off", False),
                                     (1, "torch", "auto", False), (1, "auto", "auto", False)]:
        monkeypatch.setattr(decode_ops, "DECODE", mode)
        before = decode_ops.COUNTS["decode"]
        q = torch.randn(1, 4, Lq, 32)
        with torch.no_grad():
            out = mma_attention(q, k, v, mask, backend=backend)
        ref = mma_attention_reference(q.double(), k.double(), v.double(), mask)
        assert (out.double() - ref).abs().max() < 1e-5
        assert decode_ops.COUNTS["decode"] == before + taken, (Lq, backend, mode)
    monkeypatch.setattr(decode_ops, "DECODE", "always")
    with pytest.raises(ValueError, match="DECODE"):
        mma_attention(torch.randn(1, 4, 1, 32), k, v, mask, backend="triton")


def test_plan():
    """The split count without a GPU is fixed (132 SMs): the issue's long-context shape gets >= 2 x 132
    programs, one per KV head and split, each head's group packed into one program's rows."""
    p = decode_ops.plan(1, 32, 8, 1, 131072, 128, torch.device("cpu"))
    assert p.sms == 132 and p.heads == 4 and p.chunks == 1 and p.block_m == 16
    assert p.programs(1, 8) >= 2 * 132
    p = decode_ops.plan(1, 8, 1, 16, 300, 64, torch.device("cpu"))  # 8 heads x 16 rows > 64: two chunks
    assert (p.heads, p.chunks, p.block_m) == (4, 2, 64)
    assert decode_ops.plan(64, 32, 8, 1, 4096, 128, torch.device("cpu")).splits == 1  # the heads fill the GPU
    with pytest.raises(ValueError, match="Lq"):
        decode_ops.plan(1, 1, 1, 17, 20, 64, torch.device("cpu"))



@pytest.mark.parametrize("rows, general, tile", [(16, False, (64, 4, 3)), (16, True, (64, 4, 3)),
                                                 (32, False, (64, 8, 3)), (32, True, (32, 8, 3)),
                                                 (64, True, (32, 8, 3))])
def test_gpu_tile_general_rule(rows, general, tile):
    """On a GPU, a launch with groups or a window (every tile runs the general rule) takes 32-key tiles at 32 or
    64 packed rows: 64-key ones spilled on sm_90 (`python -m benchmarks.static.decode`, its VARIANTS)."""
    assert decode_ops._gpu_tile(rows, 128, torch.bfloat16, general) == tile


def test_benchmark_suite_degrades_on_cpu(tmp_path, capsys):
    """`python -m benchmarks --suite decode` without CUDA: the CPU path and SDPA are timed (and checked against
    each other), the Triton providers are reported skipped, and the run succeeds."""
    import json

    from benchmarks.__main__ import main

    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    assert main(["--suite", "decode", "--seqlens", "300", "--output", str(tmp_path), "--rep-ms", "1"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "decode" / "results.jsonl").read_text().splitlines()]
    status = {r["provider"]: r["status"] for r in recs}
    assert status["mma_decode"] == status["sdpa"] == "ok" and status["mma_prefill"] == "skipped"
    assert all(r["check_err"] <= r["check_tol"] for r in recs if r["status"] == "ok")


def test_static_launch_counts(monkeypatch):
    """The issue's step (B=1, Hq=32, Hkv=8, D=128, Lk=128K, bf16) as launched on a GPU, captured on meta tensors
    (`benchmarks.static.decode`, no compilation): >= 2 x 132 programs, the K/V cache read once in all, evenly
    over the programs; the prefill forward before it: 32 programs, each reading its KV head's whole cache."""
    from benchmarks.static import decode as sd

    monkeypatch.setattr(decode_ops, "interpreting", lambda: False)  # the GPU plan and launch
    monkeypatch.setattr(triton_ops, "interpreting", lambda: False)
    L = dict(sd.LAUNCH)
    B, Hq, Hkv, D, Lk = L["batch"], L["heads_q"], L["heads_kv"], L["head_dim"], L["seqlen"]
    launches = {s["kind"]: s for s in sd.capture(True, B, Hq, Hkv, D, Lk, 1, "bf16")}
    p = decode_ops.plan(B, Hq, Hkv, 1, Lk, D, torch.device("meta"))
    assert launches["decode"]["grid"] == (p.splits, B * Hkv) and p.splits * B * Hkv >= 2 * 132
    assert launches["merge"]["grid"] == (B * Hq,)
    cache = 2 * B * Hkv * Lk * D * 2
    per = sd.kv_bytes(launches["decode"]["mask"], 1, decode_ops.MAX_ROWS, p.block_n, p.splits, D, 2)
    assert sum(per) * B * Hkv == cache and max(per) - min(per) <= 2 * p.block_n * D * 2
    (fwd,) = [s for s in sd.capture(False, B, Hq, Hkv, D, Lk, 1, "bf16") if s["kind"] == "fwd"]
    assert sd.kv_bytes(fwd["mask"], 1, 128, 64, 1, D, 2) == [cache // Hkv]  # per query head: 4x the cache in all


@pytest.mark.cuda
@pytest.mark.parametrize("Lq", [1, 4, 16])
def test_gpu_sizes(Lq):
    """On a GPU (the plan's own splits and tiles): 8K + 7 keys, Hq 32 on 8 KV heads, D 128, bf16, left padding
    and an image among the cache; the fp64 oracle and the flash-attn rule, and the launch took the decode path."""
    mod, seg, doc = make_layout("left_pad", 2, 8192 + 7, seed=1)
    case = make_case(mod.cuda(), seg.cuda(), doc.cuda(), "mma", Hq=32, Hkv=8, Lq=Lq, D=128, dtype=torch.bfloat16,
                     seed=Lq)
    q, k, v, dout, _ = (t.cuda() if t is not None else t for t in make_inputs(case))
    mask = _mask(case)
    before = decode_ops.COUNTS["decode"]
    with torch.no_grad():
        out, lse = mma_attention(q, k, v, mask, return_lse=True)
    assert decode_ops.COUNTS["decode"] == before + 1
    ok = oracle.allowed(case["mod"], case["seg"], case["doc"], "mma", q_len=Lq).cuda()
    ref = oracle.attention64(q, k, v, ok, scale_of(case))
    plain = plain_yardstick(q, k, v, ok, scale_of(case), dout, None)[:2]
    for what, a, r, pl in zip(("out", "lse"), (out, lse), ref, plain):
        assert_rule(what, a, r, pl, torch.bfloat16)
