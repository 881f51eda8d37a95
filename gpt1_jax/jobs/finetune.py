"""The discriminative fine-tuning job (GPT-1 §3.2-3.3, §4.1), and its eval mode.

    pretrained params (or random init) --transplant--> task model (heads.py)
    task files / TFDS --task_data--> packed sequences --> sharded train steps
    --> checkpoints, metrics --> evaluation and GLUE prediction files (evaluate.py)

data -> model -> run setup -> loop -> export -> evaluation -> summary.
"""
import dataclasses
import json
import time

import flax.linen as nn
import jax
import ml_collections

from gpt1_jax import checkpoint as checkpoint_lib
from gpt1_jax import heads, loading, optim, plots, settings, tokenizers
from gpt1_jax import model as model_lib
from gpt1_jax import sharding as sharding_lib
from gpt1_jax.data import task_data as task_data_lib
from gpt1_jax.data import tasks as tasks_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.evaluation import evaluate
from gpt1_jax.jobs import finish
from gpt1_jax.storage import rundir
from gpt1_jax.train import loop as loop_lib
from gpt1_jax.train import run_setup, stopping, train_state

N_SPECIAL = len(tokenizers.SPECIAL_TOKENS)   # start, delimiter, classify


def transplant(pretrained_params, fresh_params, transfer_layers: int):
    """Fresh task-model params with the pretrained transformer copied in: the embeddings
    (token rows of the vocabulary; the specials stay freshly initialised) and the first
    `transfer_layers` blocks (-1: all)."""
    params = jax.tree_util.tree_map(lambda x: x, fresh_params)
    body = dict(params["transformer"])
    vocab = pretrained_params["tokens_embed"]["embedding"].shape[0]
    table = body["tokens_embed"]["embedding"]
    body["tokens_embed"] = {"embedding": table.at[:vocab].set(pretrained_params["tokens_embed"]["embedding"])}
    body["positions_embed"] = pretrained_params["positions_embed"]
    n_layer = sum(1 for k in pretrained_params if k.startswith("h_"))
    n = n_layer if transfer_layers < 0 else min(transfer_layers, n_layer)
    for i in range(n):
        body[f"h_{i}"] = pretrained_params[f"h_{i}"]
    params["transformer"] = body
    return params


def _sharded_target(init, mesh, rules):
    """The abstract parameters `init(rng)` would make, in their shardings on `mesh`: a
    restore target."""
    boxed = jax.eval_shape(init, jax.random.key(0))
    return train_state.with_shardings(nn.meta.unbox(boxed), sharding_lib.tree_shardings(boxed, mesh, rules))


def run(config: ml_collections.ConfigDict, workdir, stop: stopping.StopRequested | None = None) -> dict:
    """Fine-tunes on `config.task` in `workdir`, then evaluates; returns the summary."""
    workdir = rundir.path(workdir)
    spec = tasks_lib.get_task(config.task)
    start = _starting_model(config)
    mcfg = start.task_config
    _check_workdir_holds_no_other_run(workdir, spec.name)
    if jax.process_index() == 0:
        rundir.save_tokenizer(start.tokenizer, workdir / rundir.TOKENIZER)

    # Data.
    data = task_data_lib.load_task_data(
        spec.name, start.tokenizer, mcfg.n_ctx, data_dir=config.data.data_dir, source=config.data.source,
        max_train_examples=config.data.max_train_examples,
        max_eval_examples=config.data.max_eval_examples, seed=config.seed,
        max_len=config.finetune.max_len)
    n_train, s = len(data.train["label"]), data.train["tokens"].shape[1]
    batch_size = config.train.batch_size
    num_steps = config.train.num_steps or max(1, config.train.num_epochs * n_train // batch_size)
    warmup = config.optimizer.warmup_steps
    if warmup < 0:  # the paper's 0.2% of training
        warmup = int(round(0.002 * num_steps))

    # Model, optimizer, run setup (the pretrained weights transplanted into a fresh state).
    ocfg = settings.optimizer_config(config, num_steps, warmup_steps=warmup)
    model = heads.task_model(spec, mcfg, config.finetune.clf_pdrop)
    init_params = heads.init_params_fn(model, s, data.max_len)
    run_ = run_setup.setup_run(settings.run_setup(config), init_params,
                               heads.task_loss_fn(model, config.finetune.lm_coef), optim.make_optimizer(ocfg),
                               optim.learning_rate_schedule(ocfg), workdir=workdir,
                               batch_ndims={k: v.ndim for k, v in data.train.items()},
                               initial_params=_initial_params(config, start, init_params))
    # Every process iterates over the global batches (task data is small) and hands each
    # device the rows the batch sharding gives it.
    batches = task_data_lib.make_batches(data.train, batch_size, config.seed)
    if run_.data_state is not None:
        batches.set_state(run_.data_state)

    def to_global(rows: dict) -> dict:
        return {k: sharding_lib.assemble_batch(lambda r, v=v: v[r], run_.batch_sharding[k], v.shape)
                for k, v in rows.items()}

    # Loop.
    pretrained_weights = bool(start.pretrained is not None and config.finetune.load_pretrained_weights)
    if jax.process_index() == 0:
        print(f"Fine-tuning on {spec.name}: {n_train:,} examples x {s} sequences of {data.max_len} "
              f"tokens, {num_steps:,} steps of {batch_size}; init_from={config.init_from or 'random'}"
              f"{'' if config.finetune.load_pretrained_weights else ' (shape and tokenizer only: random weights)'}")
    writer = settings.metrics_writer(config, workdir, run_.resumed_from)
    loop_cfg = settings.loop_config(config, num_steps, tokens_per_step=batch_size * s * data.max_len)
    save_meta = {"config": config.to_dict(), "model": dataclasses.asdict(mcfg), "task": spec.name,
                 "num_steps": num_steps, "max_len": data.max_len}
    started = time.time()
    try:
        state, last = loop_lib.train_loop(run_, batches, to_global, loop_cfg, writer, save_meta,
                                          evaluate=_periodic_validation(config, model, data), stop_requested=stop)
    finally:
        writer.close()
        run_.checkpointer.close()

    # Finish: export, evaluation, curves, summary.
    values = {"task": spec.name, "num_params": model_lib.count_params(run_.abstract.params),
              "init_from": config.init_from, "lm_coef": config.finetune.lm_coef,
              "pretrained_weights": pretrained_weights, "transfer_layers": config.finetune.transfer_layers}
    summary = finish.finish(workdir, state, last, finish.Ending(
        num_steps, started, mcfg, start.tokenizer, values, task={"task": spec.name, "max_len": data.max_len},
        when_finished=lambda params: {"eval": evaluate.evaluate_splits(model, params, data, batch_size, workdir)},
        curves=lambda values: _curves(writer.rows(), values, spec.name)))
    if jax.process_index() == 0 and "eval" in summary:
        print(json.dumps(summary["eval"]))
    return summary


@dataclasses.dataclass
class _Start:
    """The model fine-tuning starts from: the pretrained one (`init_from`), or GPT-1's shape."""
    pretrained: loading.Pretrained | None
    base_config: model_lib.ModelConfig  # the pretrained model's own
    task_config: model_lib.ModelConfig  # with the task's special tokens, per layer
    tokenizer: tokenizers.Tokenizer


def _check_workdir_holds_no_other_run(workdir, task: str) -> None:
    """A workdir whose checkpoints another job wrote (a pre-training run, another task) would be
    resumed into a model of another shape: say so instead, before anything is written there."""
    steps = checkpoint_lib.finished_steps(workdir / rundir.CHECKPOINTS)
    if not steps:
        return
    try:
        recorded = checkpoint_lib.read_meta(workdir / rundir.CHECKPOINTS / str(steps[-1])).get("task")
    except checkpoint_lib.CheckpointError:
        return  # a damaged step: the run setup falls back past it, or names it
    if recorded != task:
        what = "a pre-training run" if recorded is None else f"a fine-tuning run on {recorded!r}"
        raise ConfigError(f"workdir {workdir} holds the checkpoints of {what} (step {steps[-1]}), not of "
                          f"fine-tuning on {task!r}: fine-tune into a new workdir (init_from={workdir} "
                          f"starts from that run)")


def _starting_model(config: ml_collections.ConfigDict) -> _Start:
    """The starting model and its tokenizer, checked against each other."""
    pretrained = loading.find(config.init_from) if config.init_from else None
    if pretrained is not None and pretrained.task is not None:
        raise checkpoint_lib.CheckpointError(
            f"init_from {pretrained.path} is a model fine-tuned on {pretrained.task!r}, not a language "
            f"model: start from the pre-training run it was fine-tuned from")
    if pretrained is not None:
        base_cfg = loading.model_config(pretrained)
        tokenizer = loading.load_tokenizer(pretrained)
        if tokenizer is None:
            raise checkpoint_lib.CheckpointError(
                f"init_from {pretrained.path} records no tokenizer ({pretrained.tokenizer_dir})")
    elif config.data.tokenizer == "gpt1_bpe":
        tokenizer = tokenizers.gpt1_bpe_tokenizer()
        base_cfg = settings.model_config(config, tokenizer.vocab_size)
    else:
        raise ConfigError("fine-tuning without init_from needs data.tokenizer='gpt1_bpe'")
    if base_cfg.n_special not in (0, N_SPECIAL):
        raise ConfigError(f"init_from {config.init_from} has n_special={base_cfg.n_special}")
    # The task model is per-layer (transplant and exports name blocks h_0, h_1, ...).
    mcfg = dataclasses.replace(base_cfg, n_special=N_SPECIAL, scan_layers=False)
    if pretrained is not None and tokenizer.vocab_size != mcfg.vocab_size:
        raise checkpoint_lib.CheckpointError(
            f"init_from {pretrained.path} records vocab_size={mcfg.vocab_size} but its tokenizer "
            f"({pretrained.tokenizer_dir}) has {tokenizer.vocab_size} entries: the checkpoint "
            f"and the tokenizer do not belong together")
    return _Start(pretrained, base_cfg, mcfg, tokenizer)


def _initial_params(config: ml_collections.ConfigDict, start: _Start, init_params):
    """`initial_params(plan)` for the run setup: fresh task params with the pretrained
    transformer transplanted in, or None (a fresh init) without pretrained weights."""
    def initial_params(plan: run_setup.Plan):
        if start.pretrained is None or not config.finetune.load_pretrained_weights:
            return None
        body = model_lib.GPT1(start.base_config)  # the pretrained model's own tree, as it was saved
        pretrained_params = start.pretrained.load_params(
            _sharded_target(model_lib.init_params_fn(body, 8), plan.mesh, plan.rules))
        if start.base_config.scan_layers:  # a training checkpoint of a scanned run
            pretrained_params = jax.jit(model_lib.per_layer_params)(pretrained_params)
        fresh = jax.jit(lambda r: nn.meta.unbox(init_params(r)),
                        out_shardings=plan.shardings.params)(jax.random.key(config.seed))
        return transplant(pretrained_params, fresh, config.finetune.transfer_layers)
    return initial_params


def _periodic_validation(config: ml_collections.ConfigDict, model, data: task_data_lib.TaskData):
    """With `train.eval_every_steps`, `params -> {metric: value}` on the evaluation splits (those the
    end of the run scores, as capped by `data.max_eval_examples`), which the loop logs as `val_<metric>`
    every that many steps and at its last, so that a sweep can prune on validation metrics; a task
    scored on several splits (MNLI) names them: `val_matched_accuracy`. None: only the end's evaluation."""
    if config.train.eval_every_steps <= 0:
        return None
    several = len(data.evals) > 1

    def validate(params) -> dict:
        results = evaluate.evaluate_splits(model, params, data, config.train.batch_size)
        return {f"{split.removeprefix('validation_')}_{name}" if several else name: value
                for split, metrics in results.items() for name, value in metrics.items()}
    return validate


def _curves(rows: list[dict], values: dict, task: str) -> bytes:
    """The loss over the steps, and the task metrics reached at the end."""
    final = {"step": values["step"], **{f"{split} {name}": value for split, results
                                        in values.get("eval", {}).items() for name, value in results.items()}}
    return plots.render_finetune_curves([*rows, final], [k for k in final if k != "step"],
                                        title=f"Fine-tuning on {task}")


def run_eval(config: ml_collections.ConfigDict, workdir) -> dict:
    """Evaluates a fine-tuned model (`init_from`, default: `workdir`) on its task's evaluation
    splits; writes the metrics under `eval` in `<workdir>/summary.json` and the predictions."""
    workdir = rundir.path(workdir)
    source = loading.find(config.init_from or workdir)
    if source.task is None:
        raise checkpoint_lib.CheckpointError(f"{source.path} is not a fine-tuned model (it records no task)")
    if source.task != config.task:
        raise ConfigError(f"{source.path} was fine-tuned on {source.task!r}, not on task {config.task!r}")
    spec = tasks_lib.get_task(source.task)
    mcfg = loading.model_config(source)
    tokenizer = loading.load_tokenizer(source)
    data = task_data_lib.load_task_data(
        spec.name, tokenizer, mcfg.n_ctx, data_dir=config.data.data_dir, source=config.data.source,
        with_train=False, max_eval_examples=config.data.max_eval_examples, seed=config.seed)
    model = heads.task_model(spec, mcfg, config.finetune.clf_pdrop)
    s = next(iter(data.evals.values()))["tokens"].shape[1]
    mesh = sharding_lib.make_mesh(dict(config.mesh))
    params = source.load_params(_sharded_target(heads.init_params_fn(model, s, data.max_len), mesh,
                                                settings.sharding_rules(config)))
    results = evaluate.evaluate_splits(model, params, data, config.train.batch_size, workdir)
    rundir.update_summary(workdir, {"eval": results, "evaluated": str(source.path)},
                          write=jax.process_index() == 0)
    if jax.process_index() == 0:
        print(json.dumps(results))
    return results
