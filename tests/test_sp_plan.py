"""`shard_plan`: equal, disjoint, sorted shards covering the row; balanced allowed pairs from O(L) counts."""
import pytest
import torch

from helpers import make_layout

from mma_kernels import MMAMask
from mma_kernels.distributed import pad_to_multiple, shard_plan


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_plan_partitions_the_row(world):
    mod, seg, doc = make_layout("packed", 2, 96, seed=1)
    mask = MMAMask(mod, seg, doc)
    plan = shard_plan(mask, world, min_chunk=2)
    shards = [plan.positions(r) for r in range(world)]
    assert all(len(s) == 96 // world for s in shards)
    assert all(bool((s[1:] > s[:-1]).all()) for s in shards)
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(96))
    # the plan's work per rank = the dense mask's allowed pairs of the rank's queries, summed over the batch
    dense = mask.to_dense()
    assert [int(dense[:, s].sum()) for s in shards] == plan.work.tolist()
    x = torch.arange(2 * 96).view(2, 96)
    assert torch.equal(plan.unshard([plan.shard(x, r, dim=1) for r in range(world)], dim=1), x)


def test_plan_balances_where_zigzag_does_not():
    mod, seg, doc = make_layout("packed", 1, 512, seed=4)
    mask = MMAMask(mod, seg, doc)
    for world in (2, 4, 8):
        ours = shard_plan(mask, world, min_chunk=4)
        zig = shard_plan(mask, world, method="zigzag")
        assert ours.imbalance <= min(zig.imbalance, 1.05), (world, ours, zig)
    causal = MMAMask(torch.zeros(1, 256, dtype=torch.long), torch.arange(256)[None])
    assert shard_plan(causal, 4, method="zigzag").imbalance == 1.0
    assert shard_plan(causal, 4, method="contiguous").imbalance == pytest.approx(1.75, abs=0.01)


def test_plan_bad_input():
    mask = MMAMask(*make_layout("packed", 1, 30))
    with pytest.raises(ValueError, match="world_size"):
        shard_plan(mask, 0)
    with pytest.raises(ValueError, match="mask: the row holds 30 positions, not a multiple of world_size=4"):
        shard_plan(mask, 4)
    with pytest.raises(TypeError, match="mask"):
        shard_plan(mask.meta, 2)
    with pytest.raises(ValueError, match="method"):
        shard_plan(mask, 2, method="ring")
    with pytest.raises(ValueError, match="rank"):
        shard_plan(mask, 2).positions(2)
    mod, seg, doc = make_layout("packed", 1, 30)
    padded = MMAMask(pad_to_multiple(mod, 4, -1), pad_to_multiple(seg, 4), pad_to_multiple(doc, 4))
    plan = shard_plan(padded, 4)
    assert padded.seq_len == 32 and plan.work.sum() == mask.num_allowed().sum()


@pytest.mark.parametrize("window", [None, 6])
def test_key_routes_cover_every_allowed_key_and_skip_the_rest(window):
    mod, seg, doc = make_layout("packed", 2, 96, seed=2)
    mask = MMAMask(mod, seg, doc)
    plan = shard_plan(mask, 4, min_chunk=4)
    routes = plan.key_routes(mask, window)
    dense = mask.to_dense(window=window).any(0)  # [Lq, Lk], any batch row
    moved = 0
    for r in range(4):
        seen = dense[plan.positions(r)].any(0)  # keys some query of rank r may see
        for s in range(4):
            ps = plan.positions(s)
            need = ps[seen[ps]]
            got = routes[s][r]
            assert bool((got[1:] > got[:-1]).all())
            assert set(need.tolist()) <= set(got.tolist()), (r, s)
            moved += len(got) if s != r else 0
    assert moved < 3 * 96  # packed documents: less than an all-gather's (P - 1) * L keys
