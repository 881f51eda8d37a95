"""A small GPT-1 that learns visibly on the bundled books on 2 CPU cores in ~10 minutes.

Same architecture, tokenizer and recipe as configs/gpt1.py, scaled down: 4 layers,
width 192 (3 heads of 64), FFN 768, the paper's 512-token windows, batches of 4 (2,048
tokens a step), 240 steps with a short warm-up. Most of its FLOPs are the tied 40,478-word output head.

    python -m gpt1_jax.main --config=configs/demo.py --workdir=runs/demo
"""
import pathlib

from gpt1_jax import config_files


def get_config():
    config = config_files.load(pathlib.Path(__file__).with_name("gpt1.py"))  # the paper's
    config.model.update(n_ctx=512, n_layer=4, n_head=3, d_model=192, d_ff=768)
    config.train.update(batch_size=4, num_steps=240, log_every_steps=10,
                        eval_every_steps=80, eval_batches=20)
    config.optimizer.update(learning_rate=1e-3, warmup_steps=30)
    config.checkpoint.update(every_steps=80)
    return config
