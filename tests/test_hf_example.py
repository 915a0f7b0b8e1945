"""The example training script runs and its loss goes down."""
import runpy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from test_hf_helpers import _one_thread  # noqa: E402,F401

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_mma_tiny.py"


def test_example_trains(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--steps", "12"])
    mod = runpy.run_path(str(EXAMPLE))
    final = mod["main"]()
    first = float(capsys.readouterr().out.split("loss")[1].split()[0])
    assert final < first
