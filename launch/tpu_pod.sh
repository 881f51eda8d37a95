#!/usr/bin/env bash
# Pre-train on a Cloud TPU pod slice: create the TPU VM if needed, put the code and a
# Python >= 3.11 environment on every worker, stop what an earlier run left there, and
# start the same command on all workers, detached, each worker logging to its own
# ~/gpt1_jax_worker.log. JAX finds the pod (coordinator, process count and id) itself,
# so the job only needs --config.distributed.initialize=True.
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION WORKDIR [--config.KEY=VALUE ...]
#   e.g. launch/tpu_pod.sh gpt1 us-central2-b v4-32 tpu-ubuntu2204-base gs://bucket/runs/gpt1
#   TPU_SPOT=1 launch/tpu_pod.sh ...     creates a spot TPU VM
#
# WORKDIR must be storage every worker sees (a gs:// bucket): checkpoints are written
# collectively by all workers. Running the script again with the same WORKDIR stops the
# old run (it checkpoints first), copies the current code and resumes from the last
# checkpoint. Spot and preemptible TPU VMs get 30 s of notice (SIGTERM): the job commits a
# checkpoint within --config.train.grace_period_secs=25 or exits without one, and the last
# committed checkpoint stays intact either way.
set -euo pipefail
usage="usage: launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION WORKDIR [--config.KEY=VALUE ...]"
name=${1:?$usage}; zone=${2:?$usage}; accelerator=${3:?$usage}; runtime=${4:?$usage}
workdir=${5:?$usage}
shift 5
repo=$(cd "$(dirname "$0")/.." && pwd)
tpu=(gcloud compute tpus tpu-vm)

on_all_workers() { "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all --command="$1"; }

if ! "${tpu[@]}" describe "$name" --zone="$zone" >/dev/null 2>&1; then
    create=(--zone="$zone" --accelerator-type="$accelerator" --version="$runtime")
    if [[ ${TPU_SPOT:-0} == 1 ]]; then create+=(--spot); fi
    "${tpu[@]}" create "$name" "${create[@]}"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
tar -C "$repo" --exclude=.git --exclude=.venv --exclude=runs --exclude=build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache -czf "$stage/gpt1_jax.tgz" .

# The training command, each word quoted here once, so any flag value survives the ssh hop.
# Attention: the einsum blocks, the one option with the paper's dropout on attention
# probabilities; the Pallas flash/splash kernels have none, and at T=512 attention is not what
# fills a TPU chip (docs/aot.md), so the launcher keeps the recipe.
printf -v train_command ' %q' .venv/bin/python -m gpt1_jax.main --config=configs/gpt1.py \
    --workdir="$workdir" --config.distributed.initialize=True --config.mesh.data=-1 \
    --config.train.grace_period_secs=25 --config.model.attention=einsum "$@"
{
    echo '#!/usr/bin/env bash'
    echo "train_command=($train_command )"
    cat <<'WORKER'
# Written by launch/tpu_pod.sh. On one TPU VM worker: `stop`, `setup` or `start`.
set -euo pipefail
code=~/gpt1_jax
log=~/gpt1_jax_worker.log
pidfile=~/gpt1_jax_worker.pid

stop() {
    # The run started by `start` leads its own session: SIGTERM to all of it, which makes
    # the job commit a checkpoint and exit; SIGKILL if it is still there 60 s later.
    if [[ -f $pidfile ]]; then
        pid=$(<"$pidfile")
        if kill -TERM -- "-$pid" 2>/dev/null; then
            for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    fi
    # A gpt1_jax process still holding the TPU (one started by hand) would keep the next
    # run from opening it.
    for fd in /proc/[0-9]*/fd/*; do
        case $(readlink "$fd" 2>/dev/null) in /dev/accel* | /dev/vfio/[0-9]*) ;; *) continue ;; esac
        pid=${fd#/proc/}; pid=${pid%%/*}
        if grep -qa gpt1_jax "/proc/$pid/cmdline" 2>/dev/null; then
            echo "$(hostname): killing stale gpt1_jax process $pid (it holds the TPU)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    # libtpu's lock file outlives a killed process, and the next libtpu then refuses the TPU.
    rm -f /tmp/libtpu_lockfile 2>/dev/null || sudo rm -f /tmp/libtpu_lockfile
}

setup() {
    # The new code in place of the old; the environment stays.
    mkdir -p "$code"
    find "$code" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
    tar -C "$code" -xzf ~/gpt1_jax.tgz
    # uv brings its own CPython 3.11 whatever the image has (3.10 on the Ubuntu 22.04
    # TPU images) and needs no apt, whose lock unattended-upgrades holds after a boot.
    export PATH=~/.local/bin:$PATH
    if ! command -v uv >/dev/null; then
        python3 -m pip install --user --quiet --upgrade uv 2>/dev/null ||
            curl -LsSf https://astral.sh/uv/install.sh | sh
    fi
    if ! "$code/.venv/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        rm -rf "$code/.venv"
        uv venv --python 3.11 "$code/.venv"
    fi
    uv pip install --quiet --python "$code/.venv/bin/python" "$code" 'jax[tpu]==0.10.2'
}

start() {
    cd "$code"
    if [[ -f $log ]]; then mv -f "$log" "$log.1"; fi  # the previous run's log is kept once
    echo "$(hostname) $(date -Is): ${train_command[*]}" > "$log"
    # Detached from the ssh session (setsid, nohup, no terminal), so it outlives it.
    setsid nohup "${train_command[@]}" >> "$log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    sleep 5
    if ! kill -0 "$(<"$pidfile")" 2>/dev/null; then
        echo "$(hostname): the job ended at once; the end of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    echo "$(hostname): started, pid $(<"$pidfile"), log $log"
}

case ${1:-} in
    stop | setup | start) "$1" ;;
    *) echo "usage: $0 stop|setup|start" >&2; exit 2 ;;
esac
WORKER
} > "$stage/gpt1_jax_worker.sh"

"${tpu[@]}" scp "$stage/gpt1_jax.tgz" "$stage/gpt1_jax_worker.sh" "$name": --zone="$zone" --worker=all
# Every worker stopped before any starts: the new processes must not meet an old one.
on_all_workers 'bash ~/gpt1_jax_worker.sh stop && bash ~/gpt1_jax_worker.sh setup'
on_all_workers 'bash ~/gpt1_jax_worker.sh start'

cat <<EOF
Started on every worker of $name. Follow it with:
  ${tpu[*]} ssh $name --zone=$zone --worker=all --command 'tail -n 5 ~/gpt1_jax_worker.log'
  ${tpu[*]} ssh $name --zone=$zone --worker=0 --command 'tail -f ~/gpt1_jax_worker.log'   # process 0 logs the metrics
Stop it (it checkpoints first):
  ${tpu[*]} ssh $name --zone=$zone --worker=all --command 'bash ~/gpt1_jax_worker.sh stop'
EOF
