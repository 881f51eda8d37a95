"""A tiny fine-tuning study for the sweep tests: SST-2 on the `pretrained` fixture, two trials
at once, the first three points fixed so that the pruner provably has one to stop.

Trials 0 and 1 (λ = 0.5) finish first; trial 2 (λ = 8) logs a training loss (task + λ LM
loss) about ten times theirs at every step, so the median pruner, which compares a running
trial with the finished ones at the same step, stops it after its warm-up steps.
"""
import json
import pathlib
import sys

import optuna

import jobs

NUM_STEPS = 16


def write_study(directory: pathlib.Path, pretrained, glue, **changes) -> pathlib.Path:
    config = {
        "name": "tiny_sst2",
        "job": {"config": "configs/finetune.py:sst2", "overrides": (
            f"init_from={pretrained}", f"data.data_dir={glue}", "data.max_train_examples=32",
            "data.max_eval_examples=24", "train.batch_size=8", f"train.num_steps={NUM_STEPS}",
            "train.log_every_steps=1", "train.progress=False", "checkpoint.every_steps=1000")},
        "space": [{"key": "optimizer.learning_rate", "type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                  {"key": "finetune.lm_coef", "type": "categorical", "choices": (0.5, 8.0)}],
        "objective": {"metric": "eval.validation.accuracy", "direction": "maximize"},
        "intermediate": {"metric": "loss", "direction": "minimize"},
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "median", "startup_trials": 1, "warmup_steps": 2},
        "num_trials": 6, "parallel": 2,
        "enqueue": ({"optimizer.learning_rate": 1e-4, "finetune.lm_coef": 0.5},
                    {"optimizer.learning_rate": 3e-4, "finetune.lm_coef": 0.5},
                    {"optimizer.learning_rate": 1e-4, "finetune.lm_coef": 8.0}),
        "launcher": {"name": "local"},
    }
    config.update(changes)
    path = directory / "study.py"
    path.write_text("import ml_collections\n\n\ndef get_config():\n"
                    f"    return ml_collections.ConfigDict({config!r})\n")
    return path


def sweep_argv(study_file, root, *extra) -> list[str]:
    return [sys.executable, "-m", "gpt1_jax.cli.sweep", f"--study={study_file}", f"--root={root}",
            "--poll_secs=0.3", *extra]


def sweep_env(tmp_path, **extra) -> dict:
    """One device per trial, and one XLA compilation cache for all: only the first trial compiles."""
    return jobs.env(1, **jobs.compilation_cache(tmp_path / "xla_cache"), **extra)


def load(root) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(pathlib.Path(root) / "_sweep" / "study.journal")))
    return optuna.load_study(study_name="tiny_sst2", storage=storage)


def trial_record(root, name: str, suffix: str):
    """A trial's exit record (.exit) or its list of starts (.starts), as the trial runner wrote them."""
    path = pathlib.Path(root) / "_sweep" / "trials" / f"{name}{suffix}"
    if suffix == ".starts":
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return json.loads(path.read_text())
