"""Padding-free packing with MMADataCollatorWithFlattening: same per-sample losses as padded batches."""
import pytest
import torch
import torch.nn.functional as F

from test_hf_helpers import _one_thread, model_pair  # noqa: F401

from mma_kernels import MMADataCollatorWithFlattening, apply_mma, mma_ids_from_input_ids

IMG, ANS = 5, 6


def _samples():
    g = torch.Generator().manual_seed(3)
    out = []
    for L, img in ((14, 2), (9, 1), (17, 3)):
        ids = torch.randint(10, 90, (L,), generator=g)
        ids[img:img + 4] = IMG
        ids[L - 4] = ANS
        labels = ids.clone()
        labels[:L - 3] = -100  # train on the answer only
        out.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return out


def _per_sample_losses(logits, labels, starts):
    losses = []
    for a, b in zip(starts[:-1], starts[1:]):
        lg, lb = logits[a:b - 1], labels[a + 1:b]
        losses.append(F.cross_entropy(lg, lb, ignore_index=-100, reduction="sum") / (lb != -100).sum())
    return torch.stack(losses)


@pytest.mark.parametrize("name", ["llama", "phi3"])
def test_packed_equals_padded(name):
    _, model = model_pair(name)
    apply_mma(model, image_token_id=IMG, answer_token_id=ANS)
    feats = _samples()
    packed = MMADataCollatorWithFlattening(image_token_id=IMG, answer_token_id=ANS)(feats)
    assert set(packed) == {"input_ids", "labels", "position_ids", "modality_ids", "segment_ids", "document_ids"}
    lens = [len(f["input_ids"]) for f in feats]
    assert packed["input_ids"].shape == (1, sum(lens))
    assert packed["document_ids"][0].tolist() == sum(([i] * n for i, n in enumerate(lens)), [])
    # expected ids by hand: images at 2..5 / 1..4 / 3..6; one segment through <|assistant|> (L - 4), then one
    # per answer token; segment numbers distinct between samples
    assert packed["modality_ids"][0].tolist() == ([0, 0] + [1] * 4 + [0] * 8 + [0] + [1] * 4 + [0] * 4
                                                  + [0] * 3 + [1] * 4 + [0] * 10)
    assert packed["segment_ids"][0].tolist() == ([0] * 11 + [1, 2, 3] + [4] * 6 + [5, 6, 7] + [8] * 14 + [9, 10, 11])
    out = model(**packed)
    starts = torch.tensor([0] + lens).cumsum(0).tolist()
    packed_losses = _per_sample_losses(out.logits[0], packed["labels"][0], starts)

    # padded batch (right padding), ids derived from input_ids
    L = max(lens)
    ids = torch.zeros(len(feats), L, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    att = torch.zeros_like(ids)
    for b, f in enumerate(feats):
        n = len(f["input_ids"])
        ids[b, :n], labels[b, :n], att[b, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    pad = model(ids, attention_mask=att, labels=labels)
    pad_losses = torch.stack([_per_sample_losses(pad.logits[b], labels[b], [0, lens[b]])[0] for b in range(len(feats))])
    for b, (a, n) in enumerate(zip(starts[:-1], lens)):  # full logits, every position of every sample
        torch.testing.assert_close(out.logits[0, a:a + n], pad.logits[b, :n], atol=1e-4, rtol=0)
    torch.testing.assert_close(packed_losses, pad_losses, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, pad.loss, atol=1e-5, rtol=1e-5)  # token-mean over the same tokens

    # documents matter: without document_ids (and without position ids) samples would see each other
    leak = model(input_ids=packed["input_ids"], modality_ids=packed["modality_ids"], segment_ids=packed["segment_ids"],
                 position_ids=torch.arange(sum(lens))[None], labels=packed["labels"])
    assert not torch.allclose(leak.loss, out.loss, atol=1e-4)
    # documents derived from restarting position_ids when document_ids are not given (text-only packing)
    no_doc = {k: v for k, v in packed.items() if k != "document_ids"}
    torch.testing.assert_close(model(**no_doc).loss, out.loss, atol=1e-6, rtol=1e-6)


def test_collator_explicit_ids_distinct_segments_and_errors():
    c = MMADataCollatorWithFlattening(extra_keys=("pixel_values",))
    feats = [{"input_ids": [1, 2, 3], "modality_ids": [0, 1, 0], "segment_ids": [0, 0, 1], "pixel_values": torch.ones(1, 4)},
             {"input_ids": [4, 5], "modality_ids": [1, 0], "segment_ids": [0, 0], "pixel_values": torch.zeros(2, 4)}]
    out = c(feats)
    assert out["segment_ids"].tolist() == [[0, 0, 1, 2, 2]]
    assert out["labels"].tolist() == [[-100, 2, 3, -100, 5]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert out["pixel_values"].shape == (3, 4)
    mod, seg = mma_ids_from_input_ids(torch.tensor([[1, IMG, ANS, 7]]), IMG, ANS)
    assert mod.tolist() == [[0, 1, 0, 0]] and seg[:, :3].tolist() == [[0, 0, 0]] and seg[0, 3] > 0
    with pytest.raises(ValueError, match=r"unknown keys \['foo'\]"):
        c([{"input_ids": [1], "foo": 1}])
    with pytest.raises(ValueError, match=r"features\[0\]\['modality_ids'\]: length 1"):
        c([{"input_ids": [1, 2], "modality_ids": [0]}])
