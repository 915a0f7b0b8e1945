"""Backends of `mma_attention`: `torch_ops` (CPU, any device) and `triton_ops` (CUDA, or interpreter)."""
