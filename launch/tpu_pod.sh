#!/usr/bin/env bash
# Pre-train on a Cloud TPU pod slice: create the TPU VM, put the code on every worker,
# run the same command on all workers. JAX detects the pod (coordinator, process count
# and id) by itself, so the job only needs --config.distributed.initialize=True.
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION WORKDIR [--config.KEY=VALUE ...]
#   e.g. launch/tpu_pod.sh gpt1 us-central2-b v4-32 tpu-ubuntu2204-base gs://bucket/runs/gpt1
#
# WORKDIR must be storage every worker sees (a GCS bucket: orbax writes gs:// paths), because
# checkpoints are written collectively by all workers.
set -euo pipefail
name=${1:?usage: launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION WORKDIR [flags]}
zone=${2:?zone}; accelerator=${3:?accelerator type}; runtime=${4:?runtime version}
workdir=${5:?workdir}
shift 5
repo=$(cd "$(dirname "$0")/.." && pwd)

if ! gcloud compute tpus tpu-vm describe "$name" --zone="$zone" >/dev/null 2>&1; then
    gcloud compute tpus tpu-vm create "$name" --zone="$zone" \
        --accelerator-type="$accelerator" --version="$runtime"
fi

# The same code on every worker.
tar -C "$repo" --exclude=.git --exclude=.venv --exclude=runs -czf /tmp/gpt1_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/gpt1_jax.tgz "$name":~/gpt1_jax.tgz --zone="$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
    set -e; mkdir -p ~/gpt1_jax && tar -C ~/gpt1_jax -xzf ~/gpt1_jax.tgz && cd ~/gpt1_jax &&
    python3 -m venv .venv && . .venv/bin/activate && pip install -q . 'jax[tpu]==0.10.2'"

# The same command on all workers; each feeds its own shard of every global batch and
# only worker 0 logs.
flags=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
    cd ~/gpt1_jax && . .venv/bin/activate &&
    python -m gpt1_jax.main --config=configs/gpt1.py --workdir=$workdir \
        --config.distributed.initialize=True --config.mesh.data=-1 $flags"
