#!/usr/bin/env bash
# One machine, all its devices: pre-train, then fine-tune on SST-2 from the result.
#   launch/local.sh RUN_DIR GLUE_DIR [extra --config.* flags for pre-training]
set -euo pipefail
run_dir=${1:?usage: launch/local.sh RUN_DIR GLUE_DIR [--config.KEY=VALUE ...]}
glue_dir=${2:?usage: launch/local.sh RUN_DIR GLUE_DIR [--config.KEY=VALUE ...]}
shift 2

python -m gpt1_jax.cli.main --config=configs/demo.py --workdir="$run_dir/pretrain" "$@"
python -m gpt1_jax.cli.main --config=configs/finetune.py:sst2 --workdir="$run_dir/sst2" \
    --config.init_from="$run_dir/pretrain" --config.data.data_dir="$glue_dir"
