#!/usr/bin/env bash
# The old command line of the TPU pod launcher, kept for existing scripts: it now runs
# launch/tpu.py (queued resources, a health check, logs in WORKDIR/logs/), which picks the
# runtime image from the accelerator type itself unless RUNTIME_VERSION names one ("auto" or ""
# leaves it to tpu.py). For runs that must outlive preemptions use
# `python3 launch/tpu.py supervise ...` directly (see its --help).
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION WORKDIR [--config.KEY=VALUE ...]
#   TPU_SPOT=1 launch/tpu_pod.sh ...     a spot TPU VM
set -euo pipefail
usage="usage: launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION WORKDIR [--config.KEY=VALUE ...]"
name=${1:?$usage}; zone=${2:?$usage}; accelerator=${3:?$usage}; runtime=${4?$usage}; workdir=${5:?$usage}
shift 5
spot=()
if [[ ${TPU_SPOT:-0} == 1 ]]; then spot=(--spot); fi
if [[ $runtime == auto ]]; then runtime=""; fi
exec python3 "$(dirname "$0")/tpu.py" run --name="$name" --zone="$zone" --type="$accelerator" \
    --runtime-version="$runtime" --workdir="$workdir" ${spot[@]+"${spot[@]}"} -- "$@"
