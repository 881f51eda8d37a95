"""The config, read once at the edge: ml_collections values -> the plain, validated
dataclasses and values the library takes. Nothing below this module sees a ConfigDict.
"""
import jax
import ml_collections

from gpt1_jax import assets, optim, reporting
from gpt1_jax import model as model_lib
from gpt1_jax.data import corpus as corpus_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.storage import rundir
from gpt1_jax.train import loop as loop_lib
from gpt1_jax.train import run_setup as run_setup_lib


def sharding_rules(config: ml_collections.ConfigDict) -> tuple:
    """`config.sharding_rules` ("data+fsdp" style strings) as logical-axis rules."""
    def axes(value: str):
        parts = tuple(p for p in value.split("+") if p)
        return None if not parts else parts[0] if len(parts) == 1 else parts
    return tuple((name, axes(value)) for name, value in config.sharding_rules.items())


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> model_lib.ModelConfig:
    """The model config, checked against the tokenizer's vocabulary."""
    fields = dict(config.model)
    if fields["vocab_size"] != vocab_size:
        raise ConfigError(
            f"model.vocab_size={fields['vocab_size']} but the tokenizer "
            f"({config.data.tokenizer}) has {vocab_size} entries; set --config.model.vocab_size={vocab_size}")
    return model_lib.ModelConfig(**fields)


def optimizer_config(config: ml_collections.ConfigDict, total_steps: int,
                     warmup_steps: int | None = None) -> optim.OptimizerConfig:
    fields = dict(config.optimizer)
    if warmup_steps is not None:
        fields["warmup_steps"] = warmup_steps
    return optim.OptimizerConfig(total_steps=total_steps, **fields)


def loop_config(config: ml_collections.ConfigDict, num_steps: int, **throughput) -> loop_lib.LoopConfig:
    """The training loop's settings from `config.train` and `config.checkpoint`."""
    return loop_lib.LoopConfig(
        num_steps=num_steps, stop_at_step=config.train.stop_at_step,
        log_every_steps=config.train.log_every_steps, eval_every_steps=config.train.eval_every_steps,
        checkpoint_every_steps=config.checkpoint.every_steps,
        checkpoint_every_secs=config.checkpoint.get("every_secs", 0.0),
        max_nonfinite_in_a_row=config.train.max_nonfinite_in_a_row,
        grace_period_secs=config.train.grace_period_secs, progress=config.train.progress,
        **throughput)


def run_setup(config: ml_collections.ConfigDict) -> run_setup_lib.RunSetup:
    """What `run_setup.setup_run` (and `plan_run`) need from the config besides the model and optimizer."""
    return run_setup_lib.RunSetup(
        mesh=dict(config.mesh), rules=sharding_rules(config), batch_size=config.train.batch_size,
        microbatches=config.train.microbatches, seed=config.seed,
        max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save)


def metrics_writer(config: ml_collections.ConfigDict, workdir, resume_step: int | None) -> reporting.MetricsWriter:
    """metrics.jsonl and TensorBoard, and W&B when `tracking.wandb` asks for it."""
    from gpt1_jax import tracking
    t = config.tracking  # every config builds on configs/gpt1.py, which holds the defaults
    tracker = tracking.from_settings(workdir, t.wandb, config, t.wandb_project, t.wandb_entity, t.wandb_mode)
    return reporting.MetricsWriter(workdir, resume_step=resume_step, tracker=tracker)


def corpus_source(config: ml_collections.ConfigDict):
    """The configured corpus: TFDS, the given text files (local or gs://), or the bundled books."""
    data = config.data
    if data.tfds_name:
        return corpus_lib.TfdsCorpus(data.tfds_name, split=data.tfds_split,
                                     data_dir=data.tfds_data_dir or None,
                                     text_key=data.tfds_text_key)
    if not data.text_files:
        return corpus_lib.TextFilesCorpus(assets.book_files(), unwrap=data.unwrap_lines)
    paths = rundir.expand_patterns(data.text_files, "data.text_files")
    return corpus_lib.TextFilesCorpus(paths, unwrap=data.unwrap_lines)


def cache_dir(config: ml_collections.ConfigDict, workdir=None):
    """Where token caches live: data.cache_dir (local or gs://); else, for a job of several
    processes, `<workdir>/token_cache/` (every host reads the one process 0 built); else
    the local `$GPT1_JAX_CACHE/tokens` (~/.cache/gpt1_jax/tokens)."""
    if config.data.cache_dir:
        return rundir.path(config.data.cache_dir)
    if workdir is not None and jax.process_count() > 1:
        return rundir.path(workdir) / rundir.TOKEN_CACHE
    return rundir.cache_root() / "tokens"
