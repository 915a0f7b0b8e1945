"""`MMAMask.to_block_mask`: the BlockMask built from the O(L) fields equals `create_block_mask`'s exactly.

`create_block_mask` runs the contract's mask function (`flex_mask_mod`, written from the raw ids,
independent of MMAMask's fields) on every pair; ours never does. Compared: the partial and full
block counts and indices, query side (forward) and key side (backward), sorted per row.
"""
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import LAYOUTS, make_layout, random_layout
from mma_kernels import MMAMask
from mma_kernels.reference import flex_mask_mod

flex = pytest.importorskip("torch.nn.attention.flex_attention")

LISTS = [("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"),
         ("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")]


def assert_same_lists(ours, ref):
    assert ours.seq_lengths == ref.seq_lengths and tuple(ours.BLOCK_SIZE) == tuple(ref.BLOCK_SIZE)
    for num_name, idx_name in LISTS:
        n1, n2 = getattr(ours, num_name), getattr(ref, num_name)
        assert n1.shape == n2.shape and torch.equal(n1, n2), f"{num_name} differ"
        i1, i2 = getattr(ours, idx_name), getattr(ref, idx_name)
        assert i1.shape == i2.shape, f"{idx_name}: shape {tuple(i1.shape)} vs {tuple(i2.shape)}"
        used = torch.arange(i1.shape[-1]) < n1[..., None]
        s1 = torch.where(used, i1, i1.shape[-1]).sort(-1).values
        s2 = torch.where(used, i2, i2.shape[-1]).sort(-1).values
        assert torch.equal(s1, s2), f"{idx_name} differ"


def compare(mod, seg, doc, policy, q_len, block_size, window=None, grp=None, group_policy="bidirectional_image"):
    mask = MMAMask(mod, seg, doc, policy=policy, group_ids=grp, group_policy=group_policy)
    B, Lk = mod.shape
    ours = mask.to_block_mask(block_size, q_len, window=window)
    mm = flex_mask_mod(mod, seg, doc, policy, q_offset=Lk - q_len, group_ids=grp, group_policy=group_policy,
                       window=window)
    ref = flex.create_block_mask(mm, B, None, q_len, Lk, device="cpu", BLOCK_SIZE=block_size)
    assert_same_lists(ours, ref)
    return ours


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("policy", ["mma", "causal", "bidirectional_image", "prefix"])
def test_tile_suite_layouts(layout, policy):
    """The layouts of tests/test_kernels_tiles.py; 150 tokens is not a multiple of any block size."""
    mod, seg, doc = make_layout(layout, 2, 150, seed=2)
    for q_len, bs in ((150, 16), (61, (32, 16))):
        compare(mod, seg, doc, policy, q_len, bs)


@pytest.mark.parametrize("layout", ["aki", "many_short"])
def test_benchmark_layouts(layout):
    from benchmarks.layouts import make_layout as bench_layout

    lay = bench_layout(layout, 2, 1000, seed=1)
    for q_len, bs in ((1000, 64), (333, (32, 64))):
        compare(lay.modality_ids, lay.segment_ids, lay.document_ids, "mma", q_len, bs)


def test_random_layouts():
    """Lq <= Lk, padding at the edges and inside documents, fully padded rows, documents, every
    preset and explicit pairs over three modalities, batch 3, block sizes 8..64 and rectangles."""
    rng = random.Random(12)
    policies = ["mma", "causal", "bidirectional_image", "prefix", [(0, 2), (2, 2)], [(1, 0), (2, 1), (0, 0)]]
    for _ in range(60):
        L = rng.randint(1, 130)
        mod, seg, doc = random_layout(rng, 3, L, max_mod=2)
        if rng.random() < 0.3:  # padding inside documents
            for _ in range(rng.randint(1, 4)):
                mod[rng.randrange(3), rng.randrange(L)] = -1
        if rng.random() < 0.1:
            mod[1] = -1  # a row of padding only
        compare(mod, seg, doc, rng.choice(policies), rng.randint(1, L),
                rng.choice([8, 16, 32, 64, (16, 8), (8, 32)]))


def test_random_layouts_with_groups_and_window():
    """Groups under a group policy (Gemma 3 / PaliGemma style) and a causal window (sliding-window
    layers): policy and group pairs stay allowed outside the window."""
    from test_groups_window import PRESETS, random_groups

    rng = random.Random(13)
    for _ in range(50):
        L = rng.randint(1, 130)
        mod, seg, doc = random_layout(rng, 2, L, max_mod=2)
        if rng.random() < 0.3:
            mod[rng.randrange(2), rng.randrange(L)] = -1
        grp = random_groups(rng, mod, doc) if rng.random() < 0.7 else None
        compare(mod, seg, doc, rng.choice(PRESETS + [[(0, 2), (2, 2)]]), rng.randint(1, L),
                rng.choice([8, 16, (16, 8), (8, 32)]), window=rng.choice([None, 1, 3, 8, 17, 40, 200]),
                grp=grp, group_policy=rng.choice(PRESETS + [[(1, 0), (2, 2)]]))
    # a long causal row, window of 4 blocks: row block m has full key blocks m-3..m-1 and
    # partial ones m (the diagonal) and m-4 (the window's lower edge); the rest is empty
    mod = torch.zeros(1, 512, dtype=torch.long)
    bm = compare(mod, None, None, "causal", 512, 16, window=64)
    assert int(bm.full_kv_num_blocks.sum()) == 32 * 3 - (3 + 2 + 1)
    assert int(bm.kv_num_blocks.sum()) == 32 * 2 - 4


def test_full_tiles_are_found():
    """The classification is not vacuous: a long causal document has full tiles below the
    diagonal, partial ones on it, and an image segment has full look-ahead tiles."""
    L = 256
    mod = torch.zeros(1, L, dtype=torch.long)
    mod[0, 32:160] = 1  # image, then its question: one segment
    seg = torch.zeros(1, L, dtype=torch.long)
    seg[0, 200:] = 1  # the answer
    bm = compare(mod, seg, None, "mma", L, 32)
    assert int(bm.full_kv_num_blocks.sum()) > 0 and int(bm.kv_num_blocks.sum()) > 0
    # image row block 1 (rows 32..63) sees the question keys 160..191 (block 5) as a full tile
    row1 = bm.full_kv_indices[0, 0, 1, :int(bm.full_kv_num_blocks[0, 0, 1])].tolist()
    assert 5 in row1


def test_build_is_linear_in_memory():
    """64K tokens: the build runs with an address-space limit of baseline + 768 MiB
    (one 64K x 64K bool mask is 4 GiB), and no tensor it creates is larger than a few times
    the number of tiles (512 x 512 per row) plus the length."""
    code = textwrap.dedent("""
        import resource, torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        from benchmarks.layouts import make_layout
        from mma_kernels import MMAMask

        class Largest(TorchDispatchMode):
            numel = 0
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        Largest.numel = max(Largest.numel, t.numel())
                return out

        L, B = 65536, 1
        lay = make_layout("many_short", B, L)
        mask = MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)
        mask.to_block_mask(128)  # warm-up: lazy imports and first-call allocations
        vm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")][0] * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (768 << 20), resource.RLIM_INFINITY))
        with Largest():
            bm = mask.to_block_mask(128)
        assert int(bm.kv_num_blocks.sum()) > 0
        print(Largest.numel)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    largest = int(res.stdout.split()[-1])
    tiles = 512 * 512
    assert largest <= 8 * tiles, f"largest tensor has {largest} elements; L^2 = {65536 ** 2}"
