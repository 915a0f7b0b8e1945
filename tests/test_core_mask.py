"""MMAMask against the contract: its worked examples, the literal rule, O(L) pair counts."""
import random

import pytest
import torch

from helpers import LAYOUTS, make_layout, random_layout, rule_dense
from mma_kernels import MMAMask, mma_attention
from mma_kernels.mask import NUM_FIELDS
from mma_kernels.reference import mma_attention_reference

SMALL_EXAMPLE = """
1 . . . . . . .
1 1 . 1 1 . . .
1 1 1 1 1 . . .
1 1 1 1 . . . .
1 1 1 1 1 . . .
1 1 1 1 1 1 . .
1 1 1 1 1 1 1 .
. . . . . . . .
"""


def test_small_worked_example_exact():
    mod = torch.tensor([[0, 1, 1, 0, 0, 0, 0, -1]])
    seg = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    expected = torch.tensor([[c == "1" for c in line.split()] for line in SMALL_EXAMPLE.strip().splitlines()])
    mask = MMAMask(mod, seg, policy="mma")
    assert torch.equal(mask.to_dense()[0], expected)
    assert int(mask.num_allowed()) == int(expected.sum())


def test_small_worked_example_reference_attention():
    """The reference attends exactly to the example's allowed keys: with one-hot values it returns
    the softmax weights, which must be zero exactly where the picture has a dot."""
    mod = torch.tensor([[0, 1, 1, 0, 0, 0, 0, -1]])
    seg = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    mask = MMAMask(mod, seg)
    expected = torch.tensor([[c == "1" for c in line.split()] for line in SMALL_EXAMPLE.strip().splitlines()])
    q = torch.zeros(1, 1, 8, 16, dtype=torch.float64)
    k = torch.zeros(1, 1, 8, 16, dtype=torch.float64)
    v = torch.zeros(1, 1, 8, 16, dtype=torch.float64)
    v[0, 0, :, :8] = torch.eye(8, dtype=torch.float64)
    out = mma_attention_reference(q, k, v, mask)[0, 0, :, :8]
    assert torch.equal(out > 0, expected)
    rows = expected.sum(1).clamp(min=1).double()
    assert torch.allclose(out.sum(1), expected.any(1).double())
    assert torch.allclose(out[expected], (1.0 / rows)[:, None].expand(8, 8)[expected])


# Every preset on one layout, by hand. Segment 0 = positions 0..5 holds every ordered pair of
# modalities 0, 1, 2 with the key after the query; segment 1 = 6..8 (image, text, padding).
PRESET_MOD = [0, 2, 1, 1, 0, 2, 1, 0, -1]
PRESET_SEG = [0, 0, 0, 0, 0, 0, 1, 1, 1]
PRESET_EXPECTED = {
    "causal": """
        1 . . . . . . . .
        1 1 . . . . . . .
        1 1 1 . . . . . .
        1 1 1 1 . . . . .
        1 1 1 1 1 . . . .
        1 1 1 1 1 1 . . .
        1 1 1 1 1 1 1 . .
        1 1 1 1 1 1 1 1 .
        . . . . . . . . .""",
    "mma": """
        1 . . . . . . . .
        1 1 . . . . . . .
        1 1 1 . 1 . . . .
        1 1 1 1 1 . . . .
        1 1 1 1 1 . . . .
        1 1 1 1 1 1 . . .
        1 1 1 1 1 1 1 1 .
        1 1 1 1 1 1 1 1 .
        . . . . . . . . .""",
    "bidirectional_image": """
        1 . . . . . . . .
        1 1 . . . . . . .
        1 1 1 1 . . . . .
        1 1 1 1 . . . . .
        1 1 1 1 1 . . . .
        1 1 1 1 1 1 . . .
        1 1 1 1 1 1 1 . .
        1 1 1 1 1 1 1 1 .
        . . . . . . . . .""",
    "prefix": """
        1 1 1 1 1 1 . . .
        1 1 1 1 1 1 . . .
        1 1 1 1 1 1 . . .
        1 1 1 1 1 1 . . .
        1 1 1 1 1 1 . . .
        1 1 1 1 1 1 . . .
        1 1 1 1 1 1 1 1 .
        1 1 1 1 1 1 1 1 .
        . . . . . . . . .""",
}


def _picture(text):
    return torch.tensor([[c == "1" for c in line.split()] for line in text.strip().splitlines()])


@pytest.mark.parametrize("policy", sorted(PRESET_EXPECTED))
def test_presets_against_hand_written_masks(policy):
    """Each preset against its literal matrix: the mask, the attention weights of both backends
    (one-hot values: out[i, j] > 0 exactly where i may see j), and the tests' own oracle."""
    import oracle

    mod, seg = torch.tensor([PRESET_MOD]), torch.tensor([PRESET_SEG])
    expected = _picture(PRESET_EXPECTED[policy])
    mask = MMAMask(mod, seg, policy=policy)
    assert torch.equal(mask.to_dense()[0], expected)
    assert int(mask.num_allowed()) == int(expected.sum())
    assert torch.equal(oracle.allowed(mod, seg, policy=policy)[0], expected)
    L = len(PRESET_MOD)
    q = torch.zeros(1, 1, L, 16)
    v = torch.zeros(1, 1, L, 16)
    v[0, 0, :, :L] = torch.eye(L)
    for backend in ("torch", "triton"):
        w = mma_attention(q, q, v, mask, backend=backend)[0, 0, :, :L]
        assert torch.equal(w > 0, expected), backend
        rows = expected.sum(1, keepdim=True).clamp(min=1)
        torch.testing.assert_close(w, expected / rows, atol=1e-6, rtol=0)


def aki_ids():
    """The contract's 'AKI case, worked': system 0..9, 144 image tokens 10..153, question 154..170,
    <|assistant|> at 171, answer 172..199."""
    L = 200
    mod = torch.zeros(1, L, dtype=torch.long)
    mod[0, 10:154] = 1
    seg = torch.zeros(1, L, dtype=torch.long)
    seg[0, 171:] = 1
    return mod, seg


def test_aki_worked_example():
    mod, seg = aki_ids()
    dense = MMAMask(mod, seg).to_dense()[0]
    L = mod.shape[1]
    ref = torch.tril(torch.ones(L, L, dtype=torch.bool))  # the AKI reference mask: causal ...
    ref[10:154, 154:171] = True  # ... plus mask[image_start:text_start, text_start:question_end] = 1
    assert torch.equal(dense, ref)
    assert not dense[10:154, 171:].any(), "image tokens must never see <|assistant|> or the answer"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("policy", ["mma", "causal", "bidirectional_image", "prefix", [(1, 0), (2, 1)]])
def test_to_dense_matches_literal_rule(layout, policy):
    mod, seg, doc = make_layout(layout, 2, 37, seed=3)
    mask = MMAMask(mod, seg, doc, policy=policy)
    for q_len in (37, 11, 1):
        expected = rule_dense(mod, seg, doc, policy, q_len)
        assert torch.equal(mask.to_dense(q_len), expected)
        assert torch.equal(mask.num_allowed(q_len), expected.sum((1, 2)))


def test_random_layouts_match_literal_rule():
    rng = random.Random(7)
    for case in range(60):
        L = rng.randint(1, 40)
        mod, seg, doc = random_layout(rng, 2, L, max_mod=3)
        policy = rng.choice(["mma", "causal", "bidirectional_image", "prefix", [(0, 1), (3, 2), (1, 1)]])
        use_seg, use_doc = rng.random() < 0.8, rng.random() < 0.7
        s = seg if use_seg else None
        d = doc if use_doc else None
        if use_doc and not use_seg:
            s = None
        mask = MMAMask(mod, s, d, policy=policy)
        expected = rule_dense(mod, s, d, policy)
        assert torch.equal(mask.to_dense(), expected), f"case {case}"
        assert torch.equal(mask.num_allowed(), expected.sum((1, 2)))


def test_defaults_are_causal_with_padding():
    mod = torch.tensor([[-1, 0, 1, 1, 0, 0]])
    dense = MMAMask(mod).to_dense()[0]  # no segments: every token its own segment, no look-ahead
    expected = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    expected[0, :] = False
    expected[:, 0] = False
    assert torch.equal(dense, expected)


def test_every_non_padding_row_sees_itself():
    rng = random.Random(1)
    for _ in range(20):
        mod, seg, doc = random_layout(rng, 3, 30)
        dense = MMAMask(mod, seg, doc).to_dense()
        valid = mod != -1
        assert torch.equal(dense.diagonal(dim1=1, dim2=2), valid)


def test_metadata_is_linear_in_length():
    mod = torch.zeros(2, 4096, dtype=torch.long)
    mask = MMAMask(mod, torch.zeros_like(mod))
    numel = mask.meta.numel() + mask.padcum.numel()
    assert numel <= (NUM_FIELDS + 1) * 2 * (4096 + 1)  # NUM_FIELDS int32 per token, plus padcum


def test_mask_reused_across_calls_and_heads():
    mod, seg, doc = make_layout("multi_turn", 2, 33)
    mask = MMAMask(mod, seg, doc)
    g = torch.Generator().manual_seed(0)
    for H in (1, 4):
        q = torch.randn(2, H, 33, 16, generator=g)
        out = mma_attention(q, q, q, mask, backend="torch")
        ref = mma_attention_reference(q.double(), q.double(), q.double(), mask)
        assert torch.allclose(out.double(), ref, atol=1e-5)


@pytest.mark.parametrize("policy, uniform", [("mma", True), ("prefix", True), ("bidirectional_image", True),
                                             ("causal", True), ({(1, 0), (2, 0)}, True),
                                             ({(1, 0), (2, 1), (2, 0)}, False), ({(1, 0), (2, 1)}, False)])
def test_non_uniform_policies_carry_an_inert_group_level(policy, uniform):
    """The kernels' plain-MMA rule reads the look-ahead bit per block, exact only for a uniform policy (every
    query modality that looks ahead looks at the same modalities). Another policy's mask carries a group level
    that adds nothing (GRP -1, GBITS 0), so the kernels take their general rule; the mask itself is unchanged."""
    mod = torch.tensor([[0, 2, 2, 1, 1, 0, 0, 0, -1]])
    seg = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 2, 2]])
    mask = MMAMask(mod, seg, policy=policy)
    looks = policy not in ("causal",)
    assert not mask.has_groups
    assert mask.meta.shape[1] == NUM_FIELDS + (0 if uniform or not looks else 2)
    assert torch.equal(mask.to_dense(), rule_dense(mod, seg, None, policy))
    assert "group_policy" not in repr(mask)
