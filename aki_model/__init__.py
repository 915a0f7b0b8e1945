"""AKI multimodal model with modality-mutual attention (arXiv 2503.02597), built on mma_kernels.

``from aki_model import AKIConfig, AKIModel, AKIProcessor``; see docs/aki_model.md.
"""
from .config import AKIConfig
from .model import AKIModel, AKIOutput
from .processor import AKIProcessor, prepare_tokenizer, preprocess_image
from .tokenizer import build_tokenizer

__all__ = ["AKIConfig", "AKIModel", "AKIOutput", "AKIProcessor", "build_tokenizer", "prepare_tokenizer", "preprocess_image"]
