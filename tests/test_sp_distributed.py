"""Sequence/context parallel ops on 2 and 4 gloo processes: outputs, lse and q/k/v gradients equal one
process's `mma_attention` on the whole row (fp32, flash-attn tolerance rule against the fp64 oracle), on the
CPU path and the Triton kernels (interpreter); every bad input raises a ValueError/TypeError naming the
argument, on every rank, before any data moves (no hang). One spawn per world size runs every check."""
import pytest
import torch

from helpers import assert_rule, plain_attention
from oracle import allowed, attention64_with_grads
from sp_cases import Case, run_sharded, spawn

CASES = (
    Case("packed_pad_gqa", "packed_pad", B=2, Hq=4, Hkv=2, L=48),
    Case("groups_window_mqa", "multi_image", B=1, Hq=4, Hkv=1, L=48, window=6, groups=True, seed=1),
    Case("triton_packed_pad_groups_window", "packed_pad", B=1, Hq=4, Hkv=2, L=32, window=5, groups=True,
         backend="triton", seed=2),
)
OPS = ("ulysses", "context", "hybrid")  # hybrid: Ulysses over pairs of ranks, context parallel across (4 ranks)


def _ops(world):
    import torch.distributed as dist

    from mma_kernels.distributed import context_parallel_attention, ulysses_attention

    ops = {"ulysses": ulysses_attention, "context": context_parallel_attention}
    if world == 4:  # ranks 2c + u: Ulysses groups {0, 1}, {2, 3}; context-parallel groups {0, 2}, {1, 3}
        rank = dist.get_rank()
        uls = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        cps = [dist.new_group([0, 2]), dist.new_group([1, 3])]
        ug, cg = uls[rank // 2], cps[rank % 2]

        def hybrid(q, k, v, mask, plan, group=None, **kw):
            return context_parallel_attention(q, k, v, mask, plan, cg, ulysses_group=ug, **kw)

        ops["hybrid"] = hybrid
    return ops


def _bad_inputs(rank, world):
    """(label, exception type name, message) per bad input, in order; then a good call still works."""
    from mma_kernels import MMAMask
    from mma_kernels.distributed import context_parallel_attention, shard_plan, ulysses_attention

    case = Case("bad", "packed", B=1, Hq=4, Hkv=2, L=16 * world)
    mask = case.mask()
    plan = shard_plan(mask, world, min_chunk=2)
    pos = plan.positions(rank)
    q, k, v = (t.index_select(2, pos) for t in case.tensors()[:3])
    mod, seg, doc, _ = case.ids()
    other_mask = MMAMask(mod.flip(1), seg.flip(1), doc.flip(1))
    mine = mod.clone()
    mine[0, 3] = 1 - mine[0, 3] if rank == world - 1 else mine[0, 3]  # the last rank disagrees on one id
    drift = MMAMask(mine, seg, doc)
    short = MMAMask(mod[:, : plan.shard_len], seg[:, : plan.shard_len], doc[:, : plan.shard_len])
    trials = {
        "unequal_shards": lambda op: op(q[:, :, :-1] if rank == 0 else q, k, v, mask, plan),
        "other_world_size": lambda op: op(q, k, v, mask, shard_plan(mask, world * 2)),
        "other_mask_plan": lambda op: op(q, k, v, mask, shard_plan(other_mask, world)),
        "heads_not_divisible": lambda op: op(q[:, :3], k[:, :1], v[:, :1], mask, plan),
        "shard_mask": lambda op: op(q, k, v, short, plan),
        "ranks_disagree": lambda op: op(q, k, v, drift, shard_plan(drift, world)),
        "bad_kwarg": lambda op: op(q, k, v, mask, plan, windw=3),
    }
    out = []
    for opname, op in (("ulysses", ulysses_attention), ("context", context_parallel_attention)):
        for label, fn in trials.items():
            try:
                fn(op)
                out.append((opname, label, None, ""))
            except (ValueError, TypeError) as e:
                out.append((opname, label, type(e).__name__, str(e)))
        good = op(q, k, v, mask, plan)  # nothing left pending on the group
        out.append((opname, "good_after", None, tuple(good.shape)))
    return out


def _readme_snippet(rank, world):
    """The README's (and docs/distributed.md's) torchrun snippet, run as pasted on this rank."""
    import contextlib
    import io
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```py\n(.*?)```", text, re.S) if "torchrun" in b)
    ns = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "README.md sp block", "exec"), ns)
    return [(ns[n] - ns["ref"]).abs().max().item() for n in ("out_u", "out_c")] + [ns["ql"].grad is not None]


def _gather_ids(rank, world):
    """`gather_row`: each rank's shard of the ids back to the whole row, on every rank."""
    from mma_kernels.distributed import gather_row, shard_plan

    case = Case("ids", "packed", B=2, Hq=2, Hkv=2, L=12 * world)
    mod, seg, doc, _ = case.ids()
    plan = shard_plan(case.mask(), world, min_chunk=2)
    return all(torch.equal(gather_row(plan.shard(t, rank, dim=1), plan, dim=1), t) for t in (mod, seg, doc))


def _worker(rank, world, cases):
    from mma_kernels.distributed import shard_plan

    res = {"bad": _bad_inputs(rank, world), "readme": _readme_snippet(rank, world), "gather": _gather_ids(rank, world)}
    ops = _ops(world)
    for case in cases:
        plan = shard_plan(case.mask(), world, min_chunk=2)
        res[case.name, "positions"] = plan.positions(rank)
        for opname, op in ops.items():
            res[case.name, opname] = run_sharded(op, case, plan, rank)
    if "hybrid" in ops:
        res["bad_hybrid"] = _bad_hybrid(rank, world, ops["hybrid"])
    return res


def _bad_hybrid(rank, world, hybrid):
    """Combined Ulysses + context parallel: 3 heads on Ulysses pairs, and one rank's input bad: every rank raises."""
    from mma_kernels.distributed import shard_plan

    case = Case("bad", "packed", B=1, Hq=4, Hkv=2, L=16 * world)
    mask = case.mask()
    plan = shard_plan(mask, world, min_chunk=2)
    q, k, v = (t.index_select(2, plan.positions(rank)) for t in case.tensors()[:3])
    out = []
    for label, fn in (("heads", lambda: hybrid(q[:, :3], k[:, :1], v[:, :1], mask, plan)),
                      ("one_rank_short", lambda: hybrid(q[:, :, :-1] if rank == 3 else q, k, v, mask, plan))):
        try:
            fn()
            out.append((label, None, ""))
        except (ValueError, TypeError) as e:
            out.append((label, type(e).__name__, str(e)))
    out.append(("good_after", None, tuple(hybrid(q, k, v, mask, plan).shape)))
    return out


def _single(case):
    """One process on the whole row: mma_attention's (out, lse, dq, dk, dv), the oracle's and plain PyTorch's."""
    from mma_kernels import mma_attention

    q, k, v, dout, dlse = case.tensors()
    mask = case.mask()
    mod, seg, doc, grp = case.ids()
    ok = allowed(mod, seg, doc, "mma", grp=grp, window=case.window)
    scale = case.D ** -0.5
    ref = attention64_with_grads(q, k, v, ok, scale, dout, dlse)
    runs = {}
    for name in ("mma", "plain"):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        if name == "mma":
            out, lse = mma_attention(qq, kk, vv, mask, scale=scale, return_lse=True, window=case.window,
                                     backend=case.backend)
        else:
            out, lse = plain_attention(qq, kk, vv, ok, scale)
        loss = (out * dout).sum() + torch.where(torch.isfinite(lse), lse * dlse, 0.0).sum()
        loss.backward()
        runs[name] = [t.detach() for t in (out, lse, qq.grad, kk.grad, vv.grad)]
    return ref, runs["mma"], runs["plain"]


def _assemble(results, case, op):
    full = None
    for res in results:
        pos = res[case.name, "positions"]
        shards = res[case.name, op]
        if full is None:
            full = [torch.zeros(s.shape[:2] + (case.L,) + s.shape[3:], dtype=s.dtype) for s in shards]
        for f, s in zip(full, shards):
            f.index_copy_(2, pos, s)
    return full


def _check_equal(world, results, case, op):
    got = _assemble(results, case, op)
    ref, mma, plain = _single(case)
    for what, g, r, p, m in zip(("out", "lse", "dq", "dk", "dv"), got, ref, plain, mma):
        assert_rule(what, g, r, p, torch.float32)
        fin = torch.isfinite(m)
        assert torch.equal(torch.isfinite(g), fin), what
        torch.testing.assert_close(g[fin], m[fin], rtol=1e-5, atol=2e-6, msg=lambda s: f"{what} vs mma_attention: {s}")


EXPECT = {  # label -> (exception, argument the message starts with, on the ranks where it is local)
    "unequal_shards": ("ValueError", "q:"),
    "other_world_size": ("ValueError", "plan:"),
    "other_mask_plan": ("ValueError", "plan:"),
    "heads_not_divisible": ("ValueError", "q:"),
    "shard_mask": ("ValueError", "mask:"),
    "ranks_disagree": ("ValueError", "mask:"),
    "bad_kwarg": ("TypeError", "windw:"),
}


def _check_bad_inputs(world, results):
    for rank, res in enumerate(results):
        for opname, label, exc, msg in res["bad"]:
            if label == "good_after":
                assert exc is None
                continue
            if label == "heads_not_divisible" and opname == "context":  # context parallel takes any head count
                assert exc is None, (rank, opname, label, msg)
                continue
            want_exc, prefix = EXPECT[label]
            assert exc is not None, f"rank {rank}: {opname} accepted {label}"
            if label == "unequal_shards" and rank != 0:  # the other ranks name the argument and rank 0
                assert exc == "ValueError" and msg.startswith("q: rank 0"), (rank, opname, msg)
                continue
            assert exc == want_exc and msg.startswith(prefix), (rank, opname, label, exc, msg)
            if label == "heads_not_divisible":
                assert "context_parallel_attention" in msg


def _check_bad_hybrid(results):
    for rank, res in enumerate(results):
        got = {label: (exc, msg) for label, exc, msg in res["bad_hybrid"]}
        assert got["heads"][0] == "ValueError" and "ulysses_group" in got["heads"][1], (rank, got["heads"])
        exc, msg = got["one_rank_short"]
        assert exc == "ValueError", (rank, msg)
        assert msg.startswith("q: holds") if rank == 3 else msg.startswith("q: rank 3"), (rank, msg)
        assert got["good_after"] == (None, (1, 4, 16, 16))


def _check_gather(results):
    assert all(res["gather"] for res in results), "gather_row did not restore the ids"


def _check_readme(results):
    for rank, res in enumerate(results):
        du, dc, has_grad = res["readme"]
        assert du < 1e-5 and dc < 1e-5 and has_grad, (rank, res["readme"])


def _check_world(world):
    """One spawn runs every check on `world` processes (one test per world size: never split across xdist
    workers, so the processes start once per world size)."""
    results = spawn(_worker, world, CASES)
    failures = []

    def check(name, fn, *args):
        try:
            fn(*args)
        except AssertionError as e:
            failures.append(f"{name}: {e}")

    for case in CASES:
        for op in OPS:
            if op == "hybrid" and world != 4:
                continue
            check(f"{op} {case.name}", _check_equal, world, results, case, op)
    check("bad inputs", _check_bad_inputs, world, results)
    if world == 4:
        check("bad inputs, Ulysses x context parallel", _check_bad_hybrid, results)
    check("gather_row", _check_gather, results)
    check("README snippet", _check_readme, results)
    assert not failures, "\n".join(failures)


def test_two_processes():
    _check_world(2)


def test_four_processes():
    _check_world(4)
