"""mma-kernels: fused modality-mutual attention (AKI, arXiv 2503.02597) for multimodal LLMs."""
from .attention import mma_attention
from .mask import MMAMask
from .policy import PRESETS

__version__ = "0.1.0"
__all__ = ["MMAMask", "mma_attention", "PRESETS", "__version__"]
