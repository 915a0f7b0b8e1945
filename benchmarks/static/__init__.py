"""Static machine-code report of the Triton kernels for a GPU target, built on a CPU machine.

`python -m benchmarks.static --arch 90`: see `benchmarks/static/__main__.py` and docs/benchmarks.md.
"""
