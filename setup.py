from setuptools import find_packages, setup

setup(
    name="mma-kernels",
    version="0.1.0",
    description="Fused Triton modality-mutual attention (AKI) for multimodal LLMs: forward, backward, HF drop-in",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mma_kernels", "mma_kernels.*", "aki_model", "aki_model.*", "benchmarks", "benchmarks.*"]),
    python_requires=">=3.10",
    # A range that a CPU build of torch already satisfies: pip installs nothing more over it.
    install_requires=["torch>=2.5", "numpy"],
    extras_require={
        "triton": ["triton>=3.2"],
        "hf": ["transformers>=5.0", "safetensors"],
        "aki": ["transformers>=5.0", "safetensors", "pillow", "tqdm"],
        "bench": ["matplotlib", "tqdm"],
        "test": ["pytest", "pytest-xdist", "hypothesis", "triton>=3.2", "transformers>=5.0", "safetensors",
                 "accelerate>=1.1", "pillow", "tqdm", "matplotlib"],  # accelerate: transformers.Trainer (example)
    },
    entry_points={"console_scripts": ["mma-bench=benchmarks.__main__:main"]},
)
