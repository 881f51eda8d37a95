"""The generative pre-training job: a text corpus into next-token prediction.

    corpus files / TFDS --tokenizer--> token cache --> train / validation windows
    --> sharded train steps --> checkpoints, metrics.jsonl, TensorBoard, summary.json

data -> model -> run setup -> loop -> export -> summary. The config is read here, at
the edge (settings.py), and passed on as plain values.
"""
import dataclasses
import tempfile
import time

import jax
import ml_collections
import numpy as np

from gpt1_jax import (
    demo_text,
    distributed,
    loading,
    optim,
    plots,
    reporting,
    rundir,
    settings,
    stopping,
    tokenizers,
    trainer,
)
from gpt1_jax import model as model_lib
from gpt1_jax import sharding as sharding_lib
from gpt1_jax.data import corpus as corpus_lib
from gpt1_jax.data import reference as reference_lib
from gpt1_jax.errors import ConfigError


def prepare_tokenizer(config: ml_collections.ConfigDict, workdir, source) -> tokenizers.Tokenizer:
    """The job's tokenizer, recorded in `<workdir>/tokenizer` for later jobs.

    A workdir that already records one (a resumed job) keeps it. Otherwise process 0
    builds it (a sentencepiece tokenizer is trained on the corpus) and records it, and the
    other processes read what it recorded.
    """
    directory = rundir.path(workdir) / rundir.TOKENIZER
    kind = config.data.tokenizer
    if kind not in ("gpt1_bpe", "sentencepiece"):
        raise ConfigError(f"data.tokenizer={kind!r}; expected 'gpt1_bpe' or 'sentencepiece'")
    with distributed.main_first("tokenizer") as is_main:
        if rundir.has_tokenizer(directory):
            tokenizer = tokenizers.load_tokenizer(directory)
            if tokenizer.kind != kind:
                raise ConfigError(f"{directory} records a {tokenizer.kind!r} tokenizer but "
                                  f"data.tokenizer={kind!r}; use a new workdir")
        elif not is_main:
            raise ConfigError(f"{directory}: process 0 recorded no tokenizer")
        else:
            tokenizer = tokenizers.gpt1_bpe_tokenizer() if kind == "gpt1_bpe" else \
                _train_sentencepiece(source, config.data.sentencepiece_vocab_size)
            rundir.save_tokenizer(tokenizer, directory)
    return tokenizer


def _train_sentencepiece(source, vocab_size: int):
    with tempfile.TemporaryDirectory() as tmp:
        text_file = f"{tmp}/corpus.txt"
        with open(text_file, "w", encoding="utf-8") as f:
            for document in source.documents():
                f.write(document.rstrip("\n") + "\n")
        return tokenizers.train_sentencepiece([text_file], vocab_size, f"{tmp}/spm")


def run(config: ml_collections.ConfigDict, workdir, stop: stopping.StopRequested | None = None) -> dict:
    """Pre-trains (or resumes pre-training) in `workdir`; returns the summary."""
    workdir = rundir.path(workdir)
    is_main = jax.process_index() == 0

    # Data: the tokenizer and the token cache are built once (process 0), then read by all.
    source = settings.corpus_source(config)
    tokenizer = prepare_tokenizer(config, workdir, source)
    with distributed.main_first("token_cache"):
        cache = corpus_lib.build_or_load_token_cache(
            source, tokenizer, settings.cache_dir(config), progress=config.train.progress and is_main)
    seq_len, batch_size = config.model.n_ctx, config.train.batch_size
    train_tokens, val_tokens = corpus_lib.split_train_val(
        cache.tokens, config.data.val_fraction, seq_len, corpus_name=cache.description)
    if corpus_lib.num_eval_batches(len(val_tokens), seq_len, batch_size) == 0:
        raise ConfigError(
            f"{cache.description}: the validation split ({len(val_tokens):,} tokens, "
            f"data.val_fraction={config.data.val_fraction}) holds fewer than one batch of "
            f"{batch_size} windows of {seq_len + 1} tokens; raise data.val_fraction or use a larger corpus")
    num_steps = config.train.num_steps or config.train.num_epochs * corpus_lib.steps_per_epoch(
        len(train_tokens), seq_len, batch_size)
    # What the loss must beat: the validation split under the training split's unigram and
    # count-bigram statistics (computed once per corpus, tokenizer and split; cached).
    reference = reference_lib.reference_levels(
        train_tokens, val_tokens, tokenizer.vocab_size,
        cache_file=reference_lib.reference_cache_file(cache.path, train_tokens, val_tokens))

    # Model and optimizer.
    mcfg = settings.model_config(config, tokenizer.vocab_size)
    ocfg = settings.optimizer_config(config, num_steps)
    model = model_lib.GPT1(mcfg)
    tx = optim.make_optimizer(ocfg)
    loss_fn = model_lib.lm_loss_fn(model)

    # Run setup: mesh, shardings, restore or create, the jitted steps.
    run_ = trainer.setup_run(settings.run_setup(config), model_lib.init_params_fn(model, seq_len),
                             loss_fn, tx, optim.learning_rate_schedule(ocfg), workdir=workdir)
    batches = corpus_lib.make_window_ids_iterator(train_tokens, seq_len, batch_size, config.seed)
    if run_.data_state is not None:
        batches.set_state(run_.data_state)
    state = run_.state

    def to_global(tokens, window_ids_B):
        # Each process reads only the rows its devices hold, wherever the mesh puts them.
        return sharding_lib.assemble_batch(
            lambda rows: corpus_lib.gather_windows(tokens, seq_len, window_ids_B[rows]),
            run_.batch_sharding, (batch_size, seq_len + 1))

    def evaluate(params) -> dict:
        losses = [float(run_.eval_step(params, to_global(val_tokens, ids))["loss"])
                  for ids in corpus_lib.eval_window_ids(len(val_tokens), seq_len, batch_size,
                                                        config.train.eval_batches)]
        loss = float(np.mean(losses))
        return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0)))}

    # Loop.
    num_params = model_lib.count_params(run_.abstract.params)
    flops_per_step = reporting.flops_per_token(
        mcfg.n_layer, mcfg.d_model, mcfg.d_ff, mcfg.embedding_rows, seq_len) * batch_size * seq_len
    peak = reporting.peak_flops_per_device(config.train.peak_flops_per_device) * jax.device_count()
    writer = reporting.MetricsWriter(workdir, resume_step=run_.resumed_from)
    if int(state.step) == 0:
        # Into the summary at once: a run killed before its end keeps its step-0 figures.
        initial_eval = evaluate(state.params)
        writer.write(0, {f"val_{k}": v for k, v in initial_eval.items()})
        rundir.update_summary(workdir, {"initial_val_loss": initial_eval["loss"],
                                        "initial_val_perplexity": initial_eval["perplexity"]},
                              write=is_main)
    if is_main:
        print(f"GPT-1: {num_params:,} parameters; corpus {cache.description}: "
              f"{len(train_tokens):,} train / {len(val_tokens):,} validation tokens; "
              f"{num_steps:,} steps of {batch_size} x {seq_len} tokens on mesh {dict(run_.mesh.shape)}")
        print(f"Reference levels (validation loss, nats/token): unigram {reference['unigram_loss']:.3f}, "
              f"count-bigram {reference['bigram_loss']:.3f}")

    def on_eval(step: int, metrics: dict) -> None:
        if is_main:  # the picture, redrawn at every evaluation
            rundir.write_bytes(workdir / rundir.CURVES, plots.render_training_curves(writer.rows(), reference))
            print(f"step {step}: validation loss {metrics['val_loss']:.3f} (unigram "
                  f"{reference['unigram_loss']:.3f}, bigram {reference['bigram_loss']:.3f})", flush=True)
    save_meta = {"config": config.to_dict(), "model": dataclasses.asdict(mcfg), "num_steps": num_steps,
                 "tokenizer_fingerprint": tokenizer.fingerprint()}
    loop_cfg = settings.loop_config(config, num_steps, tokens_per_step=batch_size * seq_len,
                                    flops_per_step=flops_per_step, peak_flops=peak)
    started = time.time()
    try:
        state, last = trainer.train_loop(state, run_.train_step, batches,
                                         lambda ids: to_global(train_tokens, ids), loop_cfg, writer,
                                         run_.checkpointer, save_meta, evaluate, stop, on_eval)
    finally:
        writer.close()
        run_.checkpointer.close()

    # Export and summary.
    final_step = int(state.step)
    values = {"num_params": num_params, "step": final_step, "num_steps": num_steps,
              "finished": final_step >= num_steps,
              "train_loss": last.get("loss"), "val_loss": last.get("val_loss"),
              "val_perplexity": last.get("val_perplexity"),
              "tokens_per_sec": last.get("tokens_per_sec"), "mfu": last.get("mfu"),
              "seconds_this_run": round(time.time() - started, 1), "reference": reference}
    recent = [r["loss"] for r in writer.rows() if "loss" in r][-10:]
    if last.get("val_loss") is not None and recent:
        # Against the mean of the last logged train losses: one batch's loss is too noisy.
        values["train_val_gap"] = last["val_loss"] - float(np.mean(recent))
    if final_step >= num_steps and config.train.sample_tokens > 0:
        values["sample"] = _continuations(mcfg, state.params, tokenizer, config)
    summary = rundir.update_summary(workdir, values, write=is_main)
    if final_step >= num_steps:
        # Exports keep the per-layer layout (h_0, h_1, ...) whatever the run trained with.
        params = state.params
        if mcfg.scan_layers:
            params = jax.jit(model_lib.per_layer_params)(params)
        loading.write_export(workdir / rundir.EXPORT, params,
                             dataclasses.asdict(dataclasses.replace(mcfg, scan_layers=False)), tokenizer)
    return summary


def _continuations(mcfg, params, tokenizer, config) -> dict:
    """A greedy and a sampled continuation of `train.sample_prompt`, printed and returned."""
    from jax.experimental import multihost_utils
    if not all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(params)):
        params = multihost_utils.process_allgather(params, tiled=True)  # onto every host
    prompt = config.train.sample_prompt
    texts = demo_text.continuations(mcfg, params, tokenizer, prompt,
                                    max_new_tokens=config.train.sample_tokens, seed=config.seed)
    if jax.process_index() == 0:
        print(f"greedy:  {prompt}{texts['greedy']}\nsampled: {prompt}{texts['sampled']}", flush=True)
    return {"prompt": prompt, **texts}
