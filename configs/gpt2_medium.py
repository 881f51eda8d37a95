"""GPT-1's recipe at GPT-2-medium width: 24 layers, width 1024, 16 heads, FFN 4096 (~350M
parameters with GPT-1's 40,478-token vocabulary and 512 positions).

The layout shows how the model scales past one device's memory: FSDP shards every
weight's "embed" dimension (and Adam's moments with it), tensor parallelism splits heads,
the FFN width and the vocabulary, and the rest of the devices split the batch. On 8 devices
that is data 2 x fsdp 2 x tensor 2; the computation is bfloat16 with float32 parameters.
The FFN and attention outputs are kept and the rest recomputed in the backward pass
(model.remat="dots"): at batch 64 without remat the job's plan does not fit a v5e-8 (16 GiB a
chip) and fills a v6e-8 to 31.0 of 32 GiB; with "dots" it needs 8.7 GiB a chip on v5e-8 (the
README's fit table, launch/aot_table.sh). The layers are one scanned block
(model.scan_layers): the compiler sees the block once, so a job (re)starts after a compile of
seconds instead of minutes; checkpoints hold the layers stacked, exports and conversions the
per-layer form.

    python -m gpt1_jax.cli.main --config=configs/gpt2_medium.py --workdir=runs/gpt2_medium
"""
import pathlib

from gpt1_jax import config_files


def get_config():
    config = config_files.load(pathlib.Path(__file__).with_name("gpt1.py"))  # the paper's
    config.model.update(n_layer=24, n_head=16, d_model=1024, d_ff=4096, dtype="bfloat16",
                        remat="dots", scan_layers=True)
    config.mesh.update(data=-1, fsdp=2, tensor=2)
    return config
