"""The generative pre-training job: a text corpus into next-token prediction.

    corpus files / TFDS --tokenizer--> token cache --> train / validation windows
    --> sharded train steps --> checkpoints, metrics.jsonl, TensorBoard, summary.json

The config is read here, at the edge, and passed on as plain values.
"""
import dataclasses
import json
import os
import pathlib
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gpt1_jax import assets
from gpt1_jax import checkpoint as checkpoint_lib
from gpt1_jax import model as model_lib
from gpt1_jax import optim
from gpt1_jax import reporting
from gpt1_jax import sharding as sharding_lib
from gpt1_jax import tokenizers
from gpt1_jax import trainer
from gpt1_jax import workdir as workdir_lib
from gpt1_jax.data import corpus as corpus_lib

TOKENIZER_DIR = "tokenizer"
EXPORT_DIR = "export"


# ---------------------------------------------------------------------------------------------
# Config -> plain values
# ---------------------------------------------------------------------------------------------

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
        raise ValueError(
            f"model.vocab_size={fields['vocab_size']} but the tokenizer "
            f"({config.data.tokenizer}) has {vocab_size} entries; set --config.model.vocab_size={vocab_size}")
    return model_lib.ModelConfig(**fields)


def loop_config(config: ml_collections.ConfigDict, num_steps: int, **throughput) -> trainer.LoopConfig:
    """The training loop's settings from `config.train` and `config.checkpoint`."""
    return trainer.LoopConfig(
        num_steps=num_steps, stop_at_step=config.train.stop_at_step,
        log_every_steps=config.train.log_every_steps, eval_every_steps=config.train.eval_every_steps,
        checkpoint_every_steps=config.checkpoint.every_steps,
        max_nonfinite_in_a_row=config.train.max_nonfinite_in_a_row,
        grace_period_secs=config.train.grace_period_secs, progress=config.train.progress,
        **throughput)


def optimizer_config(config: ml_collections.ConfigDict, total_steps: int) -> optim.OptimizerConfig:
    return optim.OptimizerConfig(total_steps=total_steps, **dict(config.optimizer))


def corpus_source(config: ml_collections.ConfigDict):
    """The configured corpus: TFDS, the given text files, or the bundled books."""
    data = config.data
    if data.tfds_name:
        return corpus_lib.TfdsCorpus(data.tfds_name, split=data.tfds_split,
                                     data_dir=data.tfds_data_dir or None,
                                     text_key=data.tfds_text_key)
    if not data.text_files:
        return corpus_lib.TextFilesCorpus(assets.book_files(), unwrap=data.unwrap_lines)
    paths = corpus_lib.expand_patterns(data.text_files, "data.text_files")
    return corpus_lib.TextFilesCorpus(paths, unwrap=data.unwrap_lines)


def cache_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    if config.data.cache_dir:
        return pathlib.Path(config.data.cache_dir).expanduser()
    return pathlib.Path(os.environ.get("GPT1_JAX_CACHE", "~/.cache/gpt1_jax")).expanduser() / "tokens"


def prepare_tokenizer(config: ml_collections.ConfigDict, workdir: pathlib.Path, source) -> tokenizers.Tokenizer:
    """The job's tokenizer, recorded in `<workdir>/tokenizer` for later jobs.

    A workdir that already records one (a resumed job) keeps it; a sentencepiece
    tokenizer is trained on the corpus once.
    """
    directory = workdir / TOKENIZER_DIR
    kind = config.data.tokenizer
    if (directory / "tokenizer.json").exists():
        tokenizer = tokenizers.load_tokenizer(directory)
        if tokenizer.kind != kind:
            raise ValueError(f"{directory} records a {tokenizer.kind!r} tokenizer but "
                             f"data.tokenizer={kind!r}; use a new workdir")
        return tokenizer
    if kind == "gpt1_bpe":
        tokenizer = tokenizers.gpt1_bpe_tokenizer()
    elif kind == "sentencepiece":
        tokenizer = _train_sentencepiece(source, config.data.sentencepiece_vocab_size, directory)
    else:
        raise ValueError(f"data.tokenizer={kind!r}; expected 'gpt1_bpe' or 'sentencepiece'")
    if jax.process_index() == 0:
        save_tokenizer(tokenizer, directory)
    return tokenizer


def save_tokenizer(tokenizer: tokenizers.Tokenizer, directory: pathlib.Path) -> None:
    """`tokenizer.save(directory)`, with tokenizer.json (whose presence marks a saved
    tokenizer) moved in last and whole: a job killed mid-save leaves none, not a torn one."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".saving-") as tmp:
        tokenizer.save(tmp)
        names = sorted(os.listdir(tmp), key=lambda name: name == tokenizers.CONFIG_FILE)
        for name in names:
            os.replace(os.path.join(tmp, name), directory / name)


def _train_sentencepiece(source, vocab_size: int, directory: pathlib.Path):
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text_file = pathlib.Path(tmp) / "corpus.txt"
        with open(text_file, "w", encoding="utf-8") as f:
            for document in source.documents():
                f.write(document.rstrip("\n") + "\n")
        return tokenizers.train_sentencepiece([text_file], vocab_size, directory / "spm_train")


# ---------------------------------------------------------------------------------------------
# The model's loss
# ---------------------------------------------------------------------------------------------

def lm_loss_fn(model: model_lib.GPT1):
    """Mean next-token cross-entropy of `tokens_BxT1` windows (inputs [:-1], targets [1:])."""
    def loss_fn(params, tokens_BxT1, rng, deterministic):
        inputs_BxT, targets_BxT = tokens_BxT1[:, :-1], tokens_BxT1[:, 1:]
        rngs = None if deterministic else {"dropout": rng}
        logits_BxTxV, _ = model.apply({"params": params}, inputs_BxT,
                                      deterministic=deterministic, rngs=rngs)
        losses_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
        return jnp.mean(losses_BxT), {}
    return loss_fn


def init_params_fn(model: model_lib.GPT1, n_ctx: int):
    def init(rng):
        return model.init(rng, jnp.zeros((1, n_ctx), jnp.int32))["params"]
    return init


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------

@workdir_lib.exclusive
def run(config: ml_collections.ConfigDict, workdir) -> dict:
    """Pre-trains (or resumes pre-training) in `workdir`; returns the summary."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0

    source = corpus_source(config)
    tokenizer = prepare_tokenizer(config, workdir, source)
    cache = corpus_lib.build_or_load_token_cache(source, tokenizer, cache_dir(config),
                                                 progress=config.train.progress and is_main)
    seq_len = config.model.n_ctx
    train_tokens, val_tokens = corpus_lib.split_train_val(
        cache.tokens, config.data.val_fraction, seq_len, corpus_name=cache.description)

    batch_size = config.train.batch_size
    if corpus_lib.num_eval_batches(len(val_tokens), seq_len, batch_size) == 0:
        raise ValueError(
            f"{cache.description}: the validation split ({len(val_tokens):,} tokens, "
            f"data.val_fraction={config.data.val_fraction}) holds fewer than one batch of "
            f"{batch_size} windows of {seq_len + 1} tokens; raise data.val_fraction or use a larger corpus")
    num_steps = config.train.num_steps or config.train.num_epochs * corpus_lib.steps_per_epoch(
        len(train_tokens), seq_len, batch_size)
    mcfg = model_config(config, tokenizer.vocab_size)
    ocfg = optimizer_config(config, num_steps)
    model = model_lib.GPT1(mcfg)
    tx = optim.make_optimizer(ocfg)

    mesh = sharding_lib.make_mesh(dict(config.mesh))
    rules = sharding_rules(config)
    batch_shard = sharding_lib.batch_sharding(mesh, rules)
    data_parallel = sharding_lib.data_parallel_size(mesh, rules)
    if batch_size % (data_parallel * config.train.microbatches):
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the data-parallel "
                         f"devices ({data_parallel}) times train.microbatches ({config.train.microbatches})")

    rng = jax.random.key(config.seed)
    init_params = init_params_fn(model, seq_len)
    abstract, shardings = trainer.state_shardings(init_params, tx, rng, mesh, rules)
    checkpointer = checkpoint_lib.Checkpointer(workdir, config.checkpoint.max_to_keep,
                                               config.checkpoint.async_save)
    batches = corpus_lib.make_train_iterator(train_tokens, seq_len, batch_size, config.seed,
                                             jax.process_index(), jax.process_count())
    latest = checkpointer.latest_step()
    if latest is not None:
        state, data_state, _ = checkpointer.restore(latest, trainer.with_shardings(abstract, shardings))
        batches.set_state(data_state)
        if is_main:
            print(f"Resuming from {checkpointer.directory / str(latest)}")
    else:
        state = trainer.create_train_state(init_params, tx, rng, shardings)

    to_global = lambda rows: sharding_lib.global_batch(rows, batch_shard)
    loss_fn = lm_loss_fn(model)
    train_step = trainer.make_train_step(loss_fn, tx, optim.learning_rate_schedule(ocfg),
                                         shardings, batch_shard, config.train.microbatches)
    eval_step = trainer.make_eval_step(loss_fn, shardings.params, batch_shard)

    def evaluate(params) -> dict:
        losses = [float(eval_step(params, to_global(rows))["loss"]) for rows in corpus_lib.eval_batches(
            val_tokens, seq_len, batch_size, config.train.eval_batches,
            jax.process_index(), jax.process_count())]
        loss = float(np.mean(losses))
        return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0)))}

    num_params = model_lib.count_params(abstract.params)
    flops_per_step = reporting.flops_per_token(
        mcfg.n_layer, mcfg.d_model, mcfg.d_ff, mcfg.embedding_rows, seq_len) * batch_size * seq_len
    peak = reporting.peak_flops_per_device(config.train.peak_flops_per_device) * jax.device_count()
    writer = reporting.MetricsWriter(workdir)
    initial_eval = None
    if int(state.step) == 0:
        initial_eval = evaluate(state.params)
        writer.write(0, {f"val_{k}": v for k, v in initial_eval.items()})
    if is_main:
        print(f"GPT-1: {num_params:,} parameters; corpus {cache.description}: "
              f"{len(train_tokens):,} train / {len(val_tokens):,} validation tokens; "
              f"{num_steps:,} steps of {batch_size} x {seq_len} tokens on mesh {dict(mesh.shape)}")

    save_meta = {"config": config.to_dict(), "model": dataclass_dict(mcfg), "num_steps": num_steps,
                 "tokenizer_fingerprint": tokenizer.fingerprint()}
    loop_cfg = loop_config(config, num_steps, tokens_per_step=batch_size * seq_len,
                           flops_per_step=flops_per_step, peak_flops=peak)
    started = time.time()
    try:
        state, last = trainer.train_loop(state, train_step, batches, to_global, loop_cfg, writer,
                                         checkpointer, save_meta, evaluate)
    finally:
        writer.close()
        checkpointer.close()

    final_step = int(state.step)
    summary = _update_summary(workdir, {
        "num_params": num_params,
        "step": final_step,
        "num_steps": num_steps,
        "train_loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "val_perplexity": last.get("val_perplexity"),
        "tokens_per_sec": last.get("tokens_per_sec"),
        "mfu": last.get("mfu"),
        "seconds_this_run": round(time.time() - started, 1),
    }, initial_eval)
    if final_step >= num_steps:
        checkpoint_lib.save_params(workdir / EXPORT_DIR, state.params, dataclass_dict(mcfg))
        if is_main:
            save_tokenizer(tokenizer, workdir / EXPORT_DIR / TOKENIZER_DIR)
    return summary


def dataclass_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _update_summary(workdir: pathlib.Path, values: dict, initial_eval) -> dict:
    """Merges this run's figures into summary.json (a resumed job keeps the step-0 eval)."""
    path = workdir / "summary.json"
    summary: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    summary.update({k: v for k, v in values.items() if v is not None})
    if initial_eval is not None:
        summary["initial_val_loss"] = initial_eval["loss"]
        summary["initial_val_perplexity"] = initial_eval["perplexity"]
    if jax.process_index() == 0:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
        os.replace(tmp, path)
    return summary
