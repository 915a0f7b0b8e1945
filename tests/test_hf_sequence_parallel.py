"""A Hugging Face training step with sequence parallelism: `apply_mma(model, sp_group=..., sp_mode=...)` on 2 gloo
processes. Every rank feeds the whole row; the loss shares and the parameter gradients summed over the ranks
equal one process on the whole row (Llava, Qwen2-VL with M-RoPE, a text decoder with packed documents)."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from sp_cases import spawn  # noqa: E402

MODELS = ("llava", "qwen2_vl", "qwen2_text")


def _model(name):
    import check_vlm_classes as cv
    import tiny_vlms as tv

    if name == "qwen2_text":
        import transformers

        torch.manual_seed(0)
        cfg = transformers.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
        return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float(), \
            dict(image_token_id=tv.IMG, answer_token_id=cv.ANS)
    return tv.make_model(name, "eager"), dict(answer_token_id=cv.ANS)


def _batch(name):
    """The whole row(s): the VLM batch of `check_vlm_classes` (2 rows, left padding; lengths made even) or two
    packed text samples (restarting position ids)."""
    import check_vlm_classes as cv
    import tiny_vlms as tv

    if name == "qwen2_text":
        ids = torch.tensor([[1, tv.IMG, tv.IMG, 7, cv.ANS, 9, 9, 2, 1, tv.IMG, 8, 8, cv.ANS, 4, 5, 6]])
        pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7]])
        labels = torch.where(torch.tensor([[0] * 5 + [1] * 3 + [0] * 5 + [1] * 3]).bool(), ids, -100)
        return dict(input_ids=ids, position_ids=pos, labels=labels)
    inputs, _, _, labels = cv.batch(name)
    if inputs["input_ids"].shape[1] % 2:  # one more left pad
        pad = lambda t, v: torch.cat([t.new_full((t.shape[0], 1), v), t], 1)  # noqa: E731
        for k, v in (("input_ids", 0), ("attention_mask", 0), ("mm_token_type_ids", 0)):
            if k in inputs:
                inputs[k] = pad(inputs[k], v)
        labels = pad(labels, -100)
    return dict(inputs, labels=labels)


def _step(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, world, names, modes):
    import torch.distributed as dist

    from mma_kernels import apply_mma
    from mma_kernels.integrations.sequence_parallel import sum_gradients

    res = {}
    for mode, name in ((m, n) for m in modes for n in names):
        model, kw = _model(name)
        apply_mma(model, sp_group=dist.group.WORLD, sp_mode=mode, **kw)
        loss, grads = _step(model, _batch(name))
        dist.all_reduce(loss)
        sum_gradients(model)
        plan = model._mma_state.sp.plan
        res[mode, name] = dict(loss=loss, grads={n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                         positions=plan.positions(rank), imbalance=plan.imbalance)
    return res


def _single(name):
    from mma_kernels import apply_mma

    model, kw = _model(name)
    apply_mma(model, **kw)
    return _step(model, _batch(name))


def test_training_step_equals_one_process():
    modes = ("ulysses", "context")
    results = spawn(_worker, 2, MODELS, modes)  # one spawn for every case
    for name in MODELS:
        loss, grads = _single(name)
        for mode in modes:
            pos = [r[mode, name]["positions"] for r in results]
            assert sorted(torch.cat(pos).tolist()) == list(range(_batch(name)["input_ids"].shape[1]))
            for r in results:
                got = r[mode, name]
                torch.testing.assert_close(got["loss"], loss, atol=1e-5, rtol=1e-5, msg=f"{mode} {name}")
                assert got["grads"].keys() == grads.keys()
                for n in grads:
                    torch.testing.assert_close(got["grads"][n], grads[n], atol=1e-5, rtol=1e-4,
                                               msg=f"{mode} {name} {n}")


def _bad(rank, world):
    import torch.distributed as dist

    from mma_kernels import apply_mma

    out = {}
    model, kw = _model("qwen2_text")
    apply_mma(model, sp_group=dist.group.WORLD, **kw)
    b = _batch("qwen2_text")
    for label, call in (
        ("odd_length", lambda: model(input_ids=b["input_ids"][:, :15], position_ids=b["position_ids"][:, :15])),
        ("generate", lambda: model.generate(b["input_ids"], max_new_tokens=1)),
    ):
        try:
            call()
            out[label] = "no error"
        except ValueError as e:
            out[label] = str(e)
    return out


def test_bad_input_raises_on_every_rank():
    for r in spawn(_bad, 2):
        assert "sequence length 15 is not a multiple of the sequence-parallel group size 2" in r["odd_length"]
        assert "not supported on a model patched with sp_group" in r["generate"]
    with pytest.raises(ValueError, match="sp_mode: expected one of"):
        from mma_kernels import apply_mma

        apply_mma(_model("qwen2_text")[0], sp_group=object(), sp_mode="ring")
