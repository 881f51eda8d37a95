"""The smallest GPT-1 that runs the whole pipeline: a setup check in about a minute, and the
model the tests train.

The paper's recipe and tokenizer (configs/gpt1.py: the GPT-1 BPE, post-LN blocks, Adam,
warm-up then cosine) at 1 layer of width 32 and 64-token windows; a few steps.

    python -m gpt1_jax.cli.main --config=configs/tiny.py --workdir=runs/tiny
"""
import pathlib

from gpt1_jax import config_files


def get_config():
    config = config_files.load(pathlib.Path(__file__).with_name("gpt1.py"))  # the paper's
    config.model.update(n_ctx=64, n_layer=1, n_head=2, d_model=32, d_ff=128)
    config.train.update(batch_size=4, num_steps=20, log_every_steps=5, eval_every_steps=10,
                        eval_batches=2, sample_tokens=8)
    config.optimizer.update(learning_rate=1e-3, warmup_steps=5)
    config.checkpoint.update(every_steps=10)
    return config
