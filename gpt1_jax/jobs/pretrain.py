"""The generative pre-training job: a text corpus into next-token prediction.

    corpus files / TFDS --tokenizer--> token cache --> train / validation windows
    --> sharded train steps --> checkpoints, metrics.jsonl, TensorBoard, summary.json

data -> model -> run setup -> loop -> export -> summary. The config is read here, at
the edge (settings.py), and passed on as plain values.
"""
import dataclasses
import time

import jax
import ml_collections
import numpy as np

from gpt1_jax import demo_text, optim, plots, reporting, settings, tokenizers
from gpt1_jax import generate as generate_lib
from gpt1_jax import model as model_lib
from gpt1_jax import sharding as sharding_lib
from gpt1_jax.data import corpus as corpus_lib
from gpt1_jax.data import prepare
from gpt1_jax.data import reference as reference_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.jobs import finish
from gpt1_jax.storage import rundir
from gpt1_jax.train import loop as loop_lib
from gpt1_jax.train import run_setup, stopping


@dataclasses.dataclass
class _Corpus:
    """The job's data: the tokenizer, the train and validation splits, what the loss must beat."""
    tokenizer: tokenizers.Tokenizer
    description: str
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    num_steps: int
    reference: dict


def run(config: ml_collections.ConfigDict, workdir, stop: stopping.StopRequested | None = None) -> dict:
    """Pre-trains (or resumes pre-training) in `workdir`; returns the summary."""
    workdir = rundir.path(workdir)
    seq_len, batch_size = config.model.n_ctx, config.train.batch_size
    data = _corpus(config, workdir)

    # Model, optimizer, run setup (mesh, shardings, restore or create, the jitted steps).
    mcfg = settings.model_config(config, data.tokenizer.vocab_size)
    ocfg = settings.optimizer_config(config, data.num_steps)
    model = model_lib.GPT1(mcfg)
    run_ = run_setup.setup_run(settings.run_setup(config), model_lib.init_params_fn(model, seq_len),
                               model_lib.lm_loss_fn(model), optim.make_optimizer(ocfg),
                               optim.learning_rate_schedule(ocfg), workdir=workdir)
    batches = corpus_lib.make_window_ids_iterator(data.train_tokens, seq_len, batch_size, config.seed)
    if run_.data_state is not None:
        batches.set_state(run_.data_state)

    def to_global(tokens, window_ids_B):
        # Each process reads only the rows its devices hold, wherever the mesh puts them.
        return sharding_lib.assemble_batch(
            lambda rows: corpus_lib.gather_windows(tokens, seq_len, window_ids_B[rows]),
            run_.batch_sharding, (batch_size, seq_len + 1))

    harness = _harness_evaluator(config, mcfg, data.tokenizer)

    def evaluate(params) -> dict:
        losses = [float(run_.eval_step(params, to_global(data.val_tokens, ids))["loss"])
                  for ids in corpus_lib.eval_window_ids(len(data.val_tokens), seq_len, batch_size,
                                                        config.train.eval_batches)]
        loss = float(np.mean(losses))
        return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))), **(harness(params) if harness else {})}

    # Loop: the untrained model's figures first, the curves redrawn at every evaluation.
    num_params = model_lib.count_params(run_.abstract.params)
    writer = settings.metrics_writer(config, workdir, run_.resumed_from)
    if int(run_.state.step) == 0:
        _initial_evaluation(workdir, writer, evaluate(run_.state.params))
    _announce(config, data, num_params, dict(run_.mesh.shape))
    loop_cfg = settings.loop_config(
        config, data.num_steps, tokens_per_step=batch_size * seq_len,
        flops_per_step=reporting.flops_per_token(mcfg.n_layer, mcfg.d_model, mcfg.d_ff, mcfg.embedding_rows,
                                                 seq_len) * batch_size * seq_len,
        peak_flops=reporting.peak_flops_per_device(config.train.peak_flops_per_device) * jax.device_count())
    save_meta = {"config": config.to_dict(), "model": dataclasses.asdict(mcfg), "num_steps": data.num_steps,
                 "tokenizer_fingerprint": data.tokenizer.fingerprint()}
    started = time.time()
    try:
        state, last = loop_lib.train_loop(run_, batches, lambda ids: to_global(data.train_tokens, ids), loop_cfg,
                                          writer, save_meta, evaluate, stop, _on_eval(workdir, writer, data))
    finally:
        writer.close()
        run_.checkpointer.close()

    # Finish: export, the end-of-run text, summary.
    values = {"num_params": num_params, "val_loss": last.get("val_loss"),
              "val_perplexity": last.get("val_perplexity"), "tokens_per_sec": last.get("tokens_per_sec"),
              "mfu": last.get("mfu"), "reference": data.reference}
    recent = [r["loss"] for r in writer.rows() if "loss" in r][-10:]
    if last.get("val_loss") is not None and recent:
        # Against the mean of the last logged train losses: one batch's loss is too noisy.
        values["train_val_gap"] = last["val_loss"] - float(np.mean(recent))
    sample = (lambda params: {"sample": _continuations(mcfg, params, data.tokenizer, config)}) \
        if config.train.sample_tokens > 0 else None
    return finish.finish(workdir, state, last, finish.Ending(
        data.num_steps, started, mcfg, data.tokenizer, values, when_finished=sample))


def _harness_evaluator(config: ml_collections.ConfigDict, model_config, tokenizer):
    """params -> {"harness/<task>/<metric>": value} for `harness.tasks`, or None when none are set."""
    h = config.harness
    if not h.tasks.strip():
        return None
    if jax.process_count() > 1:
        raise ConfigError("harness.tasks: harness evaluation during training runs in one process only; "
                          "evaluate the run's checkpoints with `python -m gpt1_jax.cli.harness` instead")
    try:
        from gpt1_jax.evaluation.harness import evaluate as harness_lib
    except ImportError as e:
        raise ConfigError(f"harness.tasks needs lm-eval: pip install \".[harness]\" ({e})") from e
    split = lambda text: [part.strip() for part in text.split(",") if part.strip()]
    return harness_lib.PretrainingEvaluator(model_config, tokenizer, split(h.tasks), limit=h.limit or None,
                                            batch_size=h.batch_size, include_paths=split(h.include_path))


def _corpus(config: ml_collections.ConfigDict, workdir) -> _Corpus:
    """The tokenizer and the token cache (built once, by process 0, then read by all), the
    train/validation split and its reference levels, and the number of steps."""
    is_main = jax.process_index() == 0
    source = settings.corpus_source(config)
    tokenizer = prepare.prepare_tokenizer(workdir, source, config.data.tokenizer,
                                          config.data.sentencepiece_vocab_size)
    if config.train.sample_tokens > 0:  # checked now rather than after the training
        generate_lib.encode_prompt(tokenizer, config.train.sample_prompt, config.model.n_ctx,
                                   "train.sample_prompt")
    cache = prepare.prepare_token_cache(source, tokenizer, settings.cache_dir(config, workdir),
                                        progress=config.train.progress and is_main)
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
    return _Corpus(tokenizer, cache.description, train_tokens, val_tokens, num_steps, reference)


def _initial_evaluation(workdir, writer, initial_eval: dict) -> None:
    """The untrained model's validation figures: into metrics.jsonl as step 0, and into the
    summary at once, so a run killed before its end keeps them."""
    writer.write(0, {f"val_{k}": v for k, v in initial_eval.items()})
    rundir.update_summary(workdir, {"initial_val_loss": initial_eval["loss"],
                                    "initial_val_perplexity": initial_eval["perplexity"]},
                          write=jax.process_index() == 0)


def _announce(config, data: _Corpus, num_params: int, mesh: dict) -> None:
    if jax.process_index() == 0:
        print(f"GPT-1: {num_params:,} parameters; corpus {data.description}: "
              f"{len(data.train_tokens):,} train / {len(data.val_tokens):,} validation tokens; "
              f"{data.num_steps:,} steps of {config.train.batch_size} x {config.model.n_ctx} tokens on mesh {mesh}")
        print(f"Reference levels (validation loss, nats/token): unigram {data.reference['unigram_loss']:.3f}, "
              f"count-bigram {data.reference['bigram_loss']:.3f}")


def _on_eval(workdir, writer, data: _Corpus):
    """After each evaluation: curves.png redrawn, and the validation loss against the references."""
    reference = data.reference

    def on_eval(step: int, metrics: dict) -> None:
        if jax.process_index() == 0:
            rundir.write_bytes(workdir / rundir.CURVES, plots.render_training_curves(writer.rows(), reference))
            print(f"step {step}: validation loss {metrics['val_loss']:.3f} (unigram "
                  f"{reference['unigram_loss']:.3f}, bigram {reference['bigram_loss']:.3f})", flush=True)
    return on_eval


def _continuations(mcfg, params, tokenizer, config) -> dict:
    """A greedy and a sampled continuation of `train.sample_prompt`, printed and returned."""
    from jax.experimental import multihost_utils
    if not all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(params)):
        params = multihost_utils.process_allgather(params, tiled=True)  # onto every host
    prompt = config.train.sample_prompt
    texts = demo_text.continuations(mcfg, params, tokenizer, prompt, max_new_tokens=config.train.sample_tokens,
                                    seed=config.seed, name="train.sample_prompt")
    if jax.process_index() == 0:
        print(f"greedy:  {prompt}{texts['greedy']}\nsampled: {prompt}{texts['sampled']}", flush=True)
    return {"prompt": prompt, **texts}
