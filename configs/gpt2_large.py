"""GPT-1's recipe at GPT-2-large width: 36 layers, width 1280, 20 heads, FFN 5120 (~760M
parameters with GPT-1's 40,478-token vocabulary and 512 positions).

As configs/gpt2_medium.py (layers scanned), with FSDP over 4 devices and each block recomputed whole in the
backward pass (model.remat="block"): on 8 devices, data 1 x fsdp 4 x tensor 2; bfloat16
computation with float32 parameters. remat="dots" does not fit a v5e-8 (16 GiB a chip): the
AOT compile of the job's plan needs 17.6 GiB a chip, "block" 7.1 (docs/aot.md).

    python -m gpt1_jax.cli.main --config=configs/gpt2_large.py --workdir=runs/gpt2_large
"""
import pathlib

from gpt1_jax import config_files


def get_config():
    config = config_files.load(pathlib.Path(__file__).with_name("gpt1.py"))  # the paper's
    config.model.update(n_layer=36, n_head=20, d_model=1280, d_ff=5120, dtype="bfloat16",
                        remat="block", scan_layers=True)
    config.mesh.update(data=-1, fsdp=4, tensor=2)
    return config
