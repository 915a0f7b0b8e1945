"""The example scripts run, their loss goes down, and the trained models still equal eager + the dense rule mask."""
import runpy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from test_hf_helpers import _one_thread  # noqa: E402,F401

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "train_mma_tiny.py"


def test_example_trains(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--steps", "12"])
    mod = runpy.run_path(str(EXAMPLE))
    final = mod["main"]()
    first = float(capsys.readouterr().out.split("loss")[1].split()[0])
    assert final < first


def test_vlm_trainer_example_trains_and_matches_eager_dense():
    pytest.importorskip("accelerate")
    sys.path.insert(0, str(EXAMPLES))
    import check_vlm_classes as cv
    import tiny_vlms as tv

    mod = runpy.run_path(str(EXAMPLES / "finetune_vlm_tiny.py"))
    first, last, model = mod["main"](["--steps", "12"])
    assert last < 0.7 * first
    # the trained weights, eager attention with the rule's dense mask: same logits (segments from labels)
    eager = tv.make_model("llava", "eager")
    eager.load_state_dict(model.state_dict())
    model.eval()
    inputs, m, seg, labels = cv.batch("llava")
    valid = inputs["attention_mask"].bool()
    with torch.no_grad():
        got = model(**inputs, labels=labels).logits
        ref = cv.eager_with_dense(eager, inputs, cv.reference_masks("llava", inputs, m, seg)).logits
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-4, rtol=0)
