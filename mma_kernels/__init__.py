"""mma-kernels: fused modality-mutual attention (AKI, arXiv 2503.02597) for multimodal LLMs."""
from .attention import mma_attention
from .mask import MMAMask
from .policy import PRESETS

from .module import MMAttention
from .integrations import (
    apply_mma,
    build_mma_mask,
    mma_ids_from_input_ids,
    register,
)
from .integrations._autoregister import install as _install_autoregister

__version__ = "0.1.0"
__all__ = ["MMAMask", "mma_attention", "PRESETS", "__version__", "MMAttention", "apply_mma", "register",
           "build_mma_mask", "mma_ids_from_input_ids", "MMADataCollatorWithFlattening"]

_install_autoregister()  # registers attn_implementation="mma" with transformers, once it is imported


def __getattr__(name):
    if name == "MMADataCollatorWithFlattening":
        from .integrations.collator import MMADataCollatorWithFlattening

        return MMADataCollatorWithFlattening
    raise AttributeError(f"module 'mma_kernels' has no attribute {name!r}")
