"""The discriminative fine-tuning job (GPT-1 §3.2-3.3, §4.1).

    pretrained params (or random init) --transplant--> task model (heads.py)
    task files / TFDS --task_data--> packed sequences --> sharded train steps
    --> checkpoints, metrics --> evaluation and GLUE prediction files (evaluate.py)
"""
import dataclasses
import json
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gpt1_jax import checkpoint as checkpoint_lib
from gpt1_jax import evaluate
from gpt1_jax import heads
from gpt1_jax import model as model_lib
from gpt1_jax import optim
from gpt1_jax import pretrain
from gpt1_jax import reporting
from gpt1_jax import sharding as sharding_lib
from gpt1_jax import tokenizers
from gpt1_jax import trainer
from gpt1_jax import workdir as workdir_lib
from gpt1_jax.data import task_data as task_data_lib
from gpt1_jax.data import tasks as tasks_lib

N_SPECIAL = len(tokenizers.SPECIAL_TOKENS)   # start, delimiter, classify
TASK_JSON = "task.json"                      # beside a fine-tuned export's model.json


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


def _pretrained_initial_params(pretrained, body_cfg, init_params, rng, param_shardings, mesh,
                               rules, transfer_layers):
    """Fresh task-model params (in their shardings) with the pretrained body transplanted."""
    body = model_lib.GPT1(body_cfg)
    boxed = jax.eval_shape(lambda r: body.init(r, jnp.zeros((1, 8), jnp.int32))["params"], rng)
    target = trainer.with_shardings(nn.meta.unbox(boxed), sharding_lib.tree_shardings(boxed, mesh, rules))
    pretrained_params = pretrained.load_params(target)
    fresh = jax.jit(lambda r: nn.meta.unbox(init_params(r)), out_shardings=param_shardings)(rng)
    return transplant(pretrained_params, fresh, transfer_layers)


@workdir_lib.exclusive
def run(config: ml_collections.ConfigDict, workdir) -> dict:
    """Fine-tunes on `config.task` in `workdir`, then evaluates; returns the summary."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    spec = tasks_lib.get_task(config.task)

    pretrained = checkpoint_lib.find_pretrained(config.init_from) if config.init_from else None
    if pretrained is not None:
        base_cfg = model_lib.ModelConfig(**pretrained.model_config)
        tokenizer = tokenizers.load_tokenizer(pretrained.tokenizer_dir)
    else:
        tokenizer = tokenizers.gpt1_bpe_tokenizer() if config.data.tokenizer == "gpt1_bpe" else None
        if tokenizer is None:
            raise ValueError("fine-tuning without init_from needs data.tokenizer='gpt1_bpe'")
        base_cfg = pretrain.model_config(config, tokenizer.vocab_size)
    if base_cfg.n_special not in (0, N_SPECIAL):
        raise ValueError(f"init_from {config.init_from} has n_special={base_cfg.n_special}")
    mcfg = dataclasses.replace(base_cfg, n_special=N_SPECIAL, vocab_size=base_cfg.vocab_size)
    # (Without init_from, pretrain.model_config has checked the vocabulary already.)
    if pretrained is not None and tokenizer.vocab_size != mcfg.vocab_size:
        raise checkpoint_lib.CheckpointError(
            f"init_from {pretrained.path} records vocab_size={mcfg.vocab_size} but its tokenizer "
            f"({pretrained.tokenizer_dir}) has {tokenizer.vocab_size} entries: the checkpoint "
            f"and the tokenizer do not belong together")

    if is_main:
        pretrain.save_tokenizer(tokenizer, workdir / pretrain.TOKENIZER_DIR)
    data = task_data_lib.load_task_data(
        spec.name, tokenizer, mcfg.n_ctx, data_dir=config.data.data_dir, source=config.data.source,
        max_train_examples=config.data.max_train_examples,
        max_eval_examples=config.data.max_eval_examples, seed=config.seed,
        max_len=config.finetune.max_len)
    n_train = len(data.train["label"])
    batch_size = config.train.batch_size
    num_steps = config.train.num_steps or max(1, config.train.num_epochs * n_train // batch_size)
    warmup = config.optimizer.warmup_steps
    if warmup < 0:
        warmup = int(round(0.002 * num_steps))
    ocfg = optim.OptimizerConfig(total_steps=num_steps, **{**dict(config.optimizer), "warmup_steps": warmup})
    model = heads.task_model(spec, mcfg, config.finetune.clf_pdrop)
    tx = optim.make_optimizer(ocfg)

    mesh = sharding_lib.make_mesh(dict(config.mesh))
    rules = pretrain.sharding_rules(config)
    if batch_size % sharding_lib.data_parallel_size(mesh, rules):
        raise ValueError(f"train.batch_size={batch_size} is not divisible by the data-parallel devices")

    s = data.train["tokens"].shape[1]
    def init_params(rng):
        return model.init(rng, jnp.zeros((1, s, data.max_len), jnp.int32),
                          jnp.zeros((1, s), jnp.int32))["params"]
    rng = jax.random.key(config.seed)
    abstract, shardings = trainer.state_shardings(init_params, tx, rng, mesh, rules)
    checkpointer = checkpoint_lib.Checkpointer(workdir, config.checkpoint.max_to_keep,
                                               config.checkpoint.async_save)
    batches = task_data_lib.make_batches(data.train, batch_size, config.seed, jax.process_index(), jax.process_count())
    latest = checkpointer.latest_step()
    if latest is not None:
        state, data_state, _ = checkpointer.restore(latest, trainer.with_shardings(abstract, shardings))
        batches.set_state(data_state)
    else:
        initial = None
        if pretrained is not None and config.finetune.load_pretrained_weights:
            initial = _pretrained_initial_params(pretrained, base_cfg, init_params, rng, shardings.params,
                                                 mesh, rules, config.finetune.transfer_layers)
        state = trainer.create_train_state(init_params, tx, rng, shardings, params=initial)

    batch_shardings = {k: sharding_lib.batch_sharding(mesh, rules, v.ndim) for k, v in data.train.items()}
    to_global = lambda rows: {k: sharding_lib.global_batch(v, batch_shardings[k]) for k, v in rows.items()}
    loss_fn = heads.task_loss_fn(model, config.finetune.lm_coef)
    train_step = trainer.make_train_step(loss_fn, tx, optim.learning_rate_schedule(ocfg), shardings,
                                         batch_shardings, config.train.microbatches)
    if is_main:
        print(f"Fine-tuning on {spec.name}: {n_train:,} examples x {s} sequences of {data.max_len} "
              f"tokens, {num_steps:,} steps of {batch_size}; init_from={config.init_from or 'random'}"
              f"{'' if config.finetune.load_pretrained_weights else ' (shape and tokenizer only: random weights)'}")
    writer = reporting.MetricsWriter(workdir)
    loop_cfg = pretrain.loop_config(config, num_steps, tokens_per_step=batch_size * s * data.max_len)
    save_meta = {"config": config.to_dict(), "model": dataclasses.asdict(mcfg), "task": spec.name,
                 "num_steps": num_steps, "max_len": data.max_len}
    started = time.time()
    try:
        state, last = trainer.train_loop(state, train_step, batches, to_global, loop_cfg, writer,
                                         checkpointer, save_meta)
    finally:
        writer.close()
        checkpointer.close()

    summary = {"task": spec.name, "num_params": model_lib.count_params(abstract.params),
               "step": int(state.step), "num_steps": num_steps, "train_loss": last.get("loss"),
               "init_from": config.init_from, "lm_coef": config.finetune.lm_coef,
               "pretrained_weights": bool(pretrained is not None and config.finetune.load_pretrained_weights),
               "transfer_layers": config.finetune.transfer_layers,
               "seconds_this_run": round(time.time() - started, 1)}
    if int(state.step) >= num_steps:
        export = workdir / pretrain.EXPORT_DIR
        checkpoint_lib.save_params(export, state.params, dataclasses.asdict(mcfg))
        if is_main:
            pretrain.save_tokenizer(tokenizer, export / pretrain.TOKENIZER_DIR)
            (export / TASK_JSON).write_text(json.dumps({"task": spec.name, "max_len": data.max_len}))
        summary["eval"] = evaluate.evaluate_splits(model, state.params, data, batch_size, workdir)
    _write_summary(workdir, summary)
    if is_main and "eval" in summary:
        print(json.dumps(summary["eval"]))
    return summary


def _write_summary(workdir: pathlib.Path, values: dict) -> None:
    path = workdir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update({k: v for k, v in values.items() if v is not None})
    if jax.process_index() == 0:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
        tmp.replace(path)


def _recorded_task(model_source: checkpoint_lib.Pretrained) -> str:
    """The task a fine-tuned export or checkpoint was trained on."""
    if model_source.kind == "export":
        path = model_source.path / TASK_JSON
        if not path.is_file():
            raise checkpoint_lib.CheckpointError(
                f"{path} is missing: {model_source.path} is not a fine-tuned model")
        return json.loads(path.read_text())["task"]
    meta = json.loads((model_source.path / "meta" / "metadata").read_text())
    if "task" not in meta:
        raise checkpoint_lib.CheckpointError(f"{model_source.path} is not a fine-tuning checkpoint")
    return meta["task"]


@workdir_lib.exclusive  # it writes summary.json and predictions/ into the workdir
def run_eval(config: ml_collections.ConfigDict, workdir) -> dict:
    """Evaluates a fine-tuned model (`init_from`, default: `workdir`) on its task's evaluation
    splits; writes the metrics under `eval` in `<workdir>/summary.json` and the predictions."""
    workdir = pathlib.Path(workdir)
    model_source = checkpoint_lib.find_pretrained(config.init_from or workdir)
    task = _recorded_task(model_source)
    if task != config.task:
        raise ValueError(f"{model_source.path} was fine-tuned on {task!r}, not on task {config.task!r}")
    spec = tasks_lib.get_task(task)
    mcfg = model_lib.ModelConfig(**model_source.model_config)
    tokenizer = tokenizers.load_tokenizer(model_source.tokenizer_dir)
    data = task_data_lib.load_task_data(
        spec.name, tokenizer, mcfg.n_ctx, data_dir=config.data.data_dir, source=config.data.source,
        with_train=False, max_eval_examples=config.data.max_eval_examples, seed=config.seed)
    model = heads.task_model(spec, mcfg, config.finetune.clf_pdrop)
    s = next(iter(data.evals.values()))["tokens"].shape[1]
    mesh = sharding_lib.make_mesh(dict(config.mesh))
    rules = pretrain.sharding_rules(config)
    boxed = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, s, data.max_len), jnp.int32),
                                                jnp.zeros((1, s), jnp.int32))["params"], jax.random.key(0))
    params = model_source.load_params(
        trainer.with_shardings(nn.meta.unbox(boxed), sharding_lib.tree_shardings(boxed, mesh, rules)))
    workdir.mkdir(parents=True, exist_ok=True)
    results = evaluate.evaluate_splits(model, params, data, config.train.batch_size, workdir)
    _write_summary(workdir, {"eval": results, "evaluated": str(model_source.path)})
    if jax.process_index() == 0:
        print(json.dumps(results))
    return results
