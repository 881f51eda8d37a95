"""Discriminative fine-tuning on one of the paper's tasks (GPT-1 §3.2, §4.1).

    python -m gpt1_jax.cli.main --config=configs/finetune.py:sst2 --workdir=runs/sst2 \
        --config.init_from=runs/demo --config.data.data_dir=../shared/data/glue

The recipe is the paper's: lr 6.25e-5, batch 32, 3 epochs, linear warm-up over 0.2% of
the steps then linear decay to 0, weight decay 0.01, classifier dropout 0.1, auxiliary
LM loss with weight 0.5. The model's shape comes from the pretrained checkpoint
(`init_from`); without one, `model` below is used. The paper's "no pre-training"
ablation is `--config.finetune.load_pretrained_weights=False`: the same shape and tokenizer
as `init_from`, random weights.

Tasks: mnli snli scitail qnli rte race race/middle race/high story_cloze mrpc qqp stsb cola sst2
"""
import pathlib

from gpt1_jax import config_files


def get_config(task: str = "sst2"):
    config = config_files.load(pathlib.Path(__file__).with_name("gpt1.py"))  # the paper's
    config.mode = "finetune"
    config.task = task
    config.init_from = ""          # pretraining workdir, training checkpoint or params export
    config.data.data_dir = ""      # task files (GLUE dir, Story Cloze dir, ...) or TFDS data_dir
    config.data.source = "files"   # or "tfds"
    config.data.max_train_examples = 0   # > 0: a seeded subset of the training set (quick runs)
    config.data.max_eval_examples = 0

    config.finetune = dict(
        lm_coef=0.5,               # λ of L3 = L2 + λ L1; 0 turns the auxiliary LM loss off
        clf_pdrop=0.1,
        transfer_layers=-1,        # transfer the embeddings and the first N blocks; -1: all
        load_pretrained_weights=True,  # False: init_from gives only the shape and tokenizer,
                                       # the weights are random (the "no pre-training" ablation)
        max_len=0,                 # pad/truncate sequences to this; 0: the longest needed, <= n_ctx
    )
    # eval_every_steps > 0: also score the evaluation splits every that many steps (and at the
    # last), logged to metrics.jsonl as val_<metric> (val_accuracy, val_mcc, ...; MNLI:
    # val_matched_accuracy): what a sweep prunes on. 0: only the end-of-run evaluation.
    config.train.update(batch_size=32, num_epochs=3, num_steps=0, log_every_steps=10,
                        eval_every_steps=0, eval_batches=0)
    config.optimizer.update(learning_rate=6.25e-5, schedule="warmup_linear",
                            warmup_steps=-1)   # -1: 0.2% of the steps
    config.checkpoint.update(every_steps=500, max_to_keep=1)
    return config
