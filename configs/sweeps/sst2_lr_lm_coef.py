"""SST-2: the learning rate x the auxiliary LM weight λ, TPE with median pruning on the validation accuracy.

    python -m gpt1_jax.cli.sweep --study=configs/sweeps/sst2_lr_lm_coef.py --root=runs/sweep_sst2 \
        --study.job.overrides='("init_from=runs/demo", "data.data_dir=../shared/data/glue")'

Every field can be overridden as `--study.KEY=VALUE`; `job.overrides` go to every trial as
`--config.KEY=VALUE`. The objective is any summary.json key (`eval.<split>.<metric>`), or
`last:<key>` for the last value of a metrics.jsonl key. Pruning compares the `intermediate`
metric (a metrics.jsonl key; its own direction) at the same step across trials: here the
validation accuracy every trial logs every `train.eval_every_steps` (configs/finetune.py).
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.name = "sst2_lr_lm_coef"
    config.job = dict(config="configs/finetune.py:sst2",
                      overrides=("init_from=runs/demo", "data.data_dir=../shared/data/glue",
                                 "data.max_train_examples=2000", "train.log_every_steps=10",
                                 "train.eval_every_steps=40", "train.progress=False"))
    config.space = [
        dict(key="optimizer.learning_rate", type="float", low=1e-5, high=1e-3, log=True),
        dict(key="finetune.lm_coef", type="categorical", choices=(0.0, 0.25, 0.5, 1.0)),
    ]
    config.objective = dict(metric="eval.validation.accuracy", direction="maximize")
    config.intermediate = dict(metric="val_accuracy", direction="maximize")
    config.sampler = dict(name="tpe", seed=0, startup_trials=4)
    config.pruner = dict(name="median", startup_trials=2, warmup_steps=20)
    config.num_trials = 12
    config.parallel = 2
    config.enqueue = ()            # points tried first: ({"optimizer.learning_rate": 6.25e-5, ...},)
    config.launcher = dict(name="local", sbatch_args=(), python="")
    return config
