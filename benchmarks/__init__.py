"""Benchmarks of modality-mutual attention against FlexAttention, SDPA and eager (``python -m benchmarks``)."""
