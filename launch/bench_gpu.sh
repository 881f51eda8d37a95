#!/usr/bin/env bash
# The paper's GPT-1 (12 x 768, 512 tokens, 40,478-word vocabulary) training on one GPU in
# bfloat16 with float32 parameters, batch 64, against transformers' OpenAIGPTLMHeadModel
# (PyTorch, torch.autocast bfloat16) on the same GPU; prints both and writes OUT.json.
#
#   launch/bench_gpu.sh [OUT.json] [extra gpt1_jax.cli.bench flags]
#   e.g. launch/bench_gpu.sh bench_gpu.json --attention=einsum --dropout=0.1
#
# Defaults: cuDNN flash attention through jax.nn.dot_product_attention (it has no dropout on
# the attention probabilities, so dropout is 0 on both sides), 3 warm-up and 10 timed steps
# of each side, taking turns of 2. Needs jax[cuda12] and a CUDA build of torch; a 10-minute limit.
set -euo pipefail
out=${1:-bench_gpu.json}
shift || true
cd "$(dirname "$0")/.."
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
# Each side runs in its own process; both are alive at once, so the bench tells JAX not to
# preallocate. Its reported peak is the allocator's peak in use.
timeout 600 python -m gpt1_jax.cli.bench --shape=gpt1 --reference=hf --dtype=bfloat16 --batch_size=64 \
    --attention=dot_product --attention_backend=cudnn --dropout=0.0 \
    --warmup=3 --steps=10 --turn_steps=2 --out="$out" "$@" > /dev/null
python - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ref = r["reference"]
gib = 2 ** 30
print(f"{r['device_kind']}, {r['shape']} shape, batch {r['batch_size']} x {r['n_ctx']}, {r['dtype']}")
print(f"  gpt1_jax : {r['tokens_per_sec']:10.0f} tokens/s  {r['step_time_sec'] * 1e3:7.1f} ms/step  "
      f"MFU {r['mfu']:.1%}  peak {r['peak_memory_bytes'] / gib:.1f} GiB")
print(f"  HF torch : {ref['tokens_per_sec']:10.0f} tokens/s  {ref['step_time_sec'] * 1e3:7.1f} ms/step  "
      f"MFU {ref['mfu']:.1%}  peak {ref['peak_memory_bytes'] / gib:.1f} GiB")
print(f"  ratio {r['ratio']:.2f}x  -> {sys.argv[1]}")
PY
