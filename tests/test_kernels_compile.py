"""The kernels compile to Hopper machine code (sm_90 cubin) with Triton's own compiler, no GPU needed.

The interpreter (tests/test_kernels*.py) checks the kernels' arithmetic; this checks what only
the real compiler sees: types, layouts, lowering. Runs in a subprocess without TRITON_INTERPRET.
"""
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "tools" / "compile_kernels.py"), "--arch", "90"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "compiled 6 variants for sm_90" in proc.stdout
