"""Test setup: without CUDA the Triton kernels run through the interpreter (set before triton loads)."""
import os
import sys

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


# Modules that exercise the Hugging Face integration: marked `hf`, so CI can run them again on the oldest
# transformers it supports (`.ci/run`: `pytest -m hf` in a second environment).
HF_MODULES = ("test_hf_", "test_aki_", "test_readme", "test_compat", "test_distributed")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.startswith(HF_MODULES):
            item.add_marker(pytest.mark.hf)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    """Error ratios (kernel error / tolerance bound) are collected here across xdist workers."""
    import tempfile

    if "MMA_RATIO_DIR" not in os.environ:
        os.environ["MMA_RATIO_DIR"] = tempfile.mkdtemp(prefix="mma_ratios_")


def pytest_terminal_summary(terminalreporter):
    import glob
    import json

    worst = {}
    for path in glob.glob(os.path.join(os.environ.get("MMA_RATIO_DIR", "/nonexistent"), "ratios-*.jsonl")):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                key = (r["dtype"], r["what"])
                worst[key] = max(worst.get(key, 0.0), r["ratio"])
    if worst:
        terminalreporter.section("worst error / tolerance-bound ratio (1.0 = at the bound)")
        for (dtype, what), ratio in sorted(worst.items()):
            terminalreporter.write_line(f"{dtype:>9} {what:>4}: {ratio:.3f}")
    counts = {}
    for path in glob.glob(os.path.join(os.environ.get("MMA_RATIO_DIR", "/nonexistent"), "fuzz-*.jsonl")):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                c = counts.setdefault((r["property"], r["backend"]), [0, 0])
                c[0] += r["cases"]
                c[1] += r["mismatches"]
    if counts:
        terminalreporter.section("fuzz cases per property and backend (tests/test_fuzz*.py)")
        for (prop, backend), (n, bad) in sorted(counts.items()):
            terminalreporter.write_line(f"{prop:>22} {backend:>7}: {n:4d} cases, {bad} mismatches")
