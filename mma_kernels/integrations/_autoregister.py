"""Register ``attn_implementation="mma"`` with transformers without importing it eagerly.

If transformers' modeling code is already loaded, register now; otherwise a one-shot import hook
registers right after ``transformers.modeling_utils`` finishes loading (``from_pretrained`` and
``set_attn_implementation`` live there, so they always see "mma"). Without transformers installed,
nothing happens.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

_TARGET = "transformers.modeling_utils"


def _register_quietly() -> None:
    try:
        from .transformers import register

        register()
    except Exception as e:  # an incompatible transformers must not break `import mma_kernels`
        warnings.warn(f"mma_kernels: could not register attn_implementation='mma' with transformers: {e!r}")


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            _register_quietly()

        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    if _TARGET in sys.modules:
        _register_quietly()
    elif importlib.util.find_spec("transformers") is not None and not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
