"""AKI processor/tokenizer, synthetic data, and the train / generate commands (tiny, CPU)."""
import random

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tqdm")

from aki_model import AKIConfig, AKIModel, AKIProcessor, build_tokenizer  # noqa: E402
from aki_model.data import COLORS, SyntheticShapes, draw_shape, make_example  # noqa: E402
from aki_model.tokenizer import SPECIAL_IDS, check_special_ids  # noqa: E402


def test_tokenizer_is_built_in_code_and_knows_the_chat_tokens(tmp_path):
    tok = build_tokenizer()
    check_special_ids(tok)
    ids = tok.encode("<|user|>\n<image>\nWhat color is the shape?<|end|>\n", add_special_tokens=False)
    assert ids[:4] == [SPECIAL_IDS["<|user|>"], SPECIAL_IDS["\n"], SPECIAL_IDS["<image>"], SPECIAL_IDS["\n"]]
    assert SPECIAL_IDS["<unk>"] not in ids
    assert tok.decode(ids, skip_special_tokens=True).strip() == "what color is the shape?"
    tok.save_pretrained(str(tmp_path))
    from transformers import PreTrainedTokenizerFast

    again = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert again.encode("red circle <image>", add_special_tokens=False) == tok.encode("red circle <image>", add_special_tokens=False)


def test_processor_batch_padding_and_pixels():
    p = AKIProcessor(image_size=32)
    conv = [{"role": "system", "content": "you are a helpful assistant ."},
            {"role": "user", "content": "<image>\nwhat color is the shape ?"},
            {"role": "assistant", "content": "red"}]
    img = draw_shape("red", "circle", "left", 32)
    b = p(conv, [img])
    assert b["pixel_values"].shape == (1, 1, 3, 32, 32)
    assert b["pixel_values"].min() >= -1 and b["pixel_values"].max() <= 1
    # generation prompt ends with <|assistant|>\n, left padding puts pads first
    short = [conv[0], {"role": "user", "content": "<image>\nred ?"}, conv[2]]
    g = p([conv[:-1], short[:-1]], [[img], [img]], add_generation_prompt=True, padding_side="left")
    assert g["input_ids"][0, -2:].tolist() == [SPECIAL_IDS["<|assistant|>"], SPECIAL_IDS["\n"]]
    assert g["input_ids"][:, -1].tolist() != [SPECIAL_IDS["<|endoftext|>"]] * 2
    assert g["attention_mask"][1, 0] == 0 and g["attention_mask"][:, -1].all()
    r = p([conv, short], [[img], [img]])
    assert r["attention_mask"][0].all() and r["attention_mask"][1, -1] == 0
    assert (r["input_ids"][1][r["attention_mask"][1] == 0] == SPECIAL_IDS["<pad>"]).all()
    with pytest.raises(ValueError, match="placeholders"):
        p(conv, [img, img])
    with pytest.raises(ValueError, match="padding_side"):
        p(conv, [img], padding_side="middle")


def test_synthetic_data_needs_the_image():
    rng = random.Random(0)
    ex = make_example(rng, 32, num_images=2, num_turns=2)
    assert len(ex["images"]) == 4
    users = [t["content"] for t in ex["conversation"] if t["role"] == "user"]
    assert all(u.count("<image>") == 2 for u in users)
    # the colour of the drawn shape is the dominant non-background colour
    img = torch.from_numpy(np.asarray(draw_shape("blue", "square", "right", 32), dtype=np.float32).reshape(-1, 3))
    far = img[(img - 200).abs().max(1).values > 40]
    assert far.numel() and (far.mean(0) - torch.tensor(COLORS["blue"], dtype=torch.float)).abs().max() < 30


def test_count_and_select_tasks_answer_from_the_picture():
    """The answers of the 'count'/'presence' scenes are what is drawn: read each quadrant's colour
    back from the pixels; 'select' shows two images and asks about one of them by its order."""
    from aki_model.data import COUNT_COLORS, NUMBERS

    palette = torch.tensor([COLORS[c] for c in COUNT_COLORS], dtype=torch.float)
    for task in ("count", "presence"):
        for ex in SyntheticShapes(32, seed=3, task=task).batch(12):
            img = torch.from_numpy(np.asarray(ex["images"][0], dtype=np.float32))
            seen = []
            for qy in (0, 16):
                for qx in (0, 16):
                    px = img[qy:qy + 16, qx:qx + 16].reshape(-1, 3)
                    fg = px[(px - 200).abs().max(1).values > 40]
                    if len(fg) > 10:
                        seen.append(COUNT_COLORS[int((palette - fg.mean(0)).norm(dim=1).argmin())])
            asked = ex["conversation"][-2]["content"].split()[-5 if task == "count" else -3]
            n = seen.count(asked)
            want = NUMBERS[n] if task == "count" else ("yes" if n else "no")
            assert 2 <= len(seen) <= 4 and ex["conversation"][-1]["content"] == want, (seen, ex["conversation"])
    ex = SyntheticShapes(32, seed=4, task="select").example()
    assert len(ex["images"]) == 2 and ex["conversation"][-2]["content"].count("<image>") == 2
    assert ex["conversation"][-2]["content"].split()[-3] in ("first", "second")
    with pytest.raises(ValueError, match="task"):
        SyntheticShapes(task="nope")


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    cfg = AKIConfig.tiny(vocab_size=256, freeze_vision_encoder=False)
    model = AKIModel(cfg).train()
    p = AKIProcessor(image_size=32)
    data = SyntheticShapes(32, max_images=2, max_turns=2, seed=0)
    exs = data.batch(16)
    b = p([e["conversation"] for e in exs], [e["images"] for e in exs])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(**b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    grads = [n for n, q in model.named_parameters() if q.grad is not None and q.grad.abs().sum() > 0]
    assert any(n.startswith("vision_encoder.") for n in grads) and any(n.startswith("vision_tokenizer.") for n in grads)


def test_frozen_vision_encoder_gets_no_gradient():
    model = AKIModel(AKIConfig.tiny(vocab_size=256))
    p = AKIProcessor(image_size=32)
    ex = make_example(random.Random(1), 32)
    model(**p(ex["conversation"], ex["images"])).loss.backward()
    assert all(q.grad is None for q in model.vision_encoder.parameters())
    assert model.vision_tokenizer.latents.grad is not None


def test_train_and_generate_commands(tmp_path, capsys):
    """The CLIs: train saves the weights it trained (its reported held-out result is reproduced from
    the checkpoint), generate answers exactly what the checkpoint's model generates for that image
    and question, and --attention causal really switches the mask."""
    from aki_model import generate as gen_cli
    from aki_model import train as train_cli
    from aki_model.data import SYSTEM_PROMPT, SyntheticShapes
    from aki_model.train import evaluate

    out = tmp_path / "ckpt"
    summary = train_cli.main(["--steps", "3", "--batch-size", "4", "--config", "tiny", "--out", str(out),
                              "--eval-examples", "4", "--no-progress", "--log-every", "1"])
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    log = (out / "loss_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr,seconds" and len(log) == 4
    assert summary["eval"]["examples"] == 4
    model, proc = AKIModel.from_pretrained(str(out)), AKIProcessor.from_pretrained(str(out))
    again = evaluate(model, proc, SyntheticShapes(32, seed=10_000), 4)
    assert again["loss"] == pytest.approx(summary["eval"]["loss"], abs=1e-6)
    assert again["accuracy"] == summary["eval"]["accuracy"]

    img = tmp_path / "shape.png"
    draw_shape("green", "triangle", "top", 32).save(img)
    q = "what color is the shape ?"
    args = ["--checkpoint", str(out), "--image", str(img), "--question", q, "--max-new-tokens", "3"]
    a1 = gen_cli.main(args + ["--show-prompt"])
    assert "<|user|>\n<image>\nwhat color is the shape ?<|end|>\n<|assistant|>\n" in capsys.readouterr().out
    conv = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "<image>\n" + q}]
    from PIL import Image

    for attention, answer in (("mma", a1), ("causal", gen_cli.main(args + ["--attention", "causal"]))):
        m = AKIModel.from_pretrained(str(out), attention=attention)
        assert m.config.attention == attention
        b = proc(conv, [Image.open(img).convert("RGB")], add_generation_prompt=True)
        seq = m.generate(b["input_ids"], b["pixel_values"], b["attention_mask"], max_new_tokens=3)
        assert answer == proc.decode(seq[0, b["input_ids"].shape[1]:])
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--attention", "full"])


def test_short_training_reads_the_image():
    """A short run on colour questions only must beat the question-only prior (1/6 for six colours
    drawn uniformly): the answer has to come from the visual tokens."""
    from aki_model.train import evaluate

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = AKIConfig.tiny(vocab_size=256, freeze_vision_encoder=False)
    model = AKIModel(cfg).train()
    p = AKIProcessor(image_size=32)
    data = SyntheticShapes(32, seed=0, kinds=("color",))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    for _ in range(120):
        exs = data.batch(16)
        loss = model(**p([e["conversation"] for e in exs], [e["images"] for e in exs])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    result = evaluate(model, p, SyntheticShapes(32, seed=1, kinds=("color",)), 64)
    assert result["accuracy_by_kind"].keys() == {"color"}
    assert result["accuracy"] > 0.6, result
