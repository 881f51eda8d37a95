#!/usr/bin/env bash
# Several processes on this one machine, joined by jax.distributed through 127.0.0.1: the
# multi-host code path (each process feeds its own rows of every batch, checkpoints are
# written collectively, only process 0 logs) without a cluster.
#
#   launch/multiprocess_local.sh NUM_PROCESSES WORKDIR [--config.KEY=VALUE ...]
#   e.g. launch/multiprocess_local.sh 2 runs/mp --config=configs/demo.py
#
# With GPUs (nvidia-smi present) process i gets GPU i; otherwise each process simulates
# DEVICES_PER_PROCESS (default 2) CPU devices. --config defaults to configs/gpt1.py.
set -euo pipefail
num=${1:?usage: launch/multiprocess_local.sh NUM_PROCESSES WORKDIR [--config.KEY=VALUE ...]}
workdir=${2:?usage: launch/multiprocess_local.sh NUM_PROCESSES WORKDIR [--config.KEY=VALUE ...]}
shift 2
cd "$(dirname "$0")/.."
config=--config=configs/gpt1.py
for arg in "$@"; do [[ $arg == --config=* ]] && config=$arg; done
flags=()
for arg in "$@"; do [[ $arg == --config=* ]] || flags+=("$arg"); done
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT   # one failed process must not leave the others waiting
for ((i = 0; i < num; i++)); do
    if command -v nvidia-smi >/dev/null; then
        device_env=("CUDA_VISIBLE_DEVICES=$i")
    else
        device_env=(JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}")
    fi
    env "${device_env[@]}" python -m gpt1_jax.cli.main "$config" --workdir="$workdir" \
        --config.distributed.initialize=True --config.distributed.coordinator_address="127.0.0.1:$port" \
        --config.distributed.num_processes="$num" --config.distributed.process_id=$i \
        ${flags[@]+"${flags[@]}"} &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
trap - EXIT
exit $status
