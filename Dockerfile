# The job's image, for Kubernetes (launch/gke.py renders the JobSet that runs it) or any
# container runtime (pyxis/enroot under SLURM: GPT1_JAX_CONTAINER_IMAGE).
#
#   docker build --build-arg ACCELERATOR=tpu  -t REGISTRY/gpt1-jax:tpu .    # TPU VMs / GKE TPU slices
#   docker build --build-arg ACCELERATOR=cuda -t REGISTRY/gpt1-jax:cuda .   # NVIDIA GPUs (CUDA 12 wheels)
#   docker build -t REGISTRY/gpt1-jax:cpu .                                 # CPU only
#
# ACCELERATOR picks setup.py's extra: "tpu" (jax[tpu] and libtpu), "cuda" (jax[cuda12], which
# brings CUDA and cuDNN as wheels, so a plain Python base image serves) or "cpu" (none). The
# command comes from the manifest: python -m gpt1_jax.cli.main --config=... --workdir=gs://...
ARG PYTHON=3.11
FROM python:${PYTHON}-slim
ARG ACCELERATOR=cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The package first, so a change to configs/ or launch/ rebuilds no dependency layer.
COPY setup.py pyproject.toml README.md ./
COPY gpt1_jax ./gpt1_jax
RUN case "$ACCELERATOR" in \
        cpu) pip install . ;; \
        tpu | cuda) pip install ".[$ACCELERATOR]" ;; \
        *) echo "ACCELERATOR=$ACCELERATOR: expected cpu, tpu or cuda" >&2; exit 1 ;; \
    esac
COPY configs ./configs
COPY launch ./launch
# The job exits 42 after committing its checkpoint on SIGTERM: the runtime must deliver the
# signal to python itself (exec form, no shell in between) and allow the grace period.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "gpt1_jax.cli.main", "--helpshort"]
