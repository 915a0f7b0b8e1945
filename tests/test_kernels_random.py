"""Randomized layouts, shapes, dtypes and policies: forward and backward against the float64 reference."""
import random

import pytest
import torch

from helpers import random_layout
from test_kernels import check_case

CHUNKS, PER_CHUNK = 10, 14  # 140 seeded cases: the CI budget (test_fuzz adds its own random cases)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_cases(chunk):
    rng = random.Random(1000 + chunk)
    for case in range(PER_CHUNK):
        Lk = rng.randint(1, 72)
        Lq = Lk if rng.random() < 0.6 else rng.randint(1, Lk)
        B = rng.randint(1, 2)
        Hq, Hkv = rng.choice([(1, 1), (2, 1), (2, 2), (4, 2), (4, 1)])
        D = rng.choice([16, 32, 48, 64])
        dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
        policy = rng.choice(["mma", "causal", "bidirectional_image", "prefix", [(0, 1), (2, 0), (1, 1)]])
        ids = random_layout(rng, B, Lk, max_mod=2)
        backend = "triton" if case % 4 else "torch"
        try:
            check_case(backend, dtype, B, Hq, Hkv, Lq, Lk, D, policy=policy, seed=case, ids=ids)
        except AssertionError as e:
            raise AssertionError(f"chunk {chunk} case {case}: {backend} {dtype} B={B} H={Hq}/{Hkv} "
                                 f"Lq={Lq} Lk={Lk} D={D} policy={policy}\n{ids}\n{e}") from e
