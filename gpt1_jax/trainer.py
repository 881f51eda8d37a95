"""Train state, the sharded jitted train/eval steps, and the training loop.

The loop is task-agnostic: a job supplies `init_params(rng) -> boxed params` (Flax
parameters with logical axis names) and `loss_fn(params, batch, rng, deterministic)
-> (loss, aux)`. The state is created abstractly (`jax.eval_shape`), its shardings are
derived from the parameters' logical axes, and it is initialised directly into them.
"""
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpt1_jax import distributed
from gpt1_jax import sharding as sharding_lib
from gpt1_jax.errors import UserError
from gpt1_jax.stopping import StopRequested

LossFn = Callable[[Any, Any, jax.Array | None, bool], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: updates taken so far
    params: Any
    opt_state: Any
    rng: jax.Array           # raw uint32 key data (orbax-friendly); dropout keys fold in the step


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(init_params: Callable, tx: optax.GradientTransformation, rng: jax.Array,
                    mesh: Mesh, rules) -> tuple[TrainState, TrainState]:
    """(abstract state, shardings) without allocating anything.

    Parameter shardings come from their logical axes; the optimizer's per-parameter
    leaves (Adam moments) follow their parameter; scalars are replicated.
    """
    boxed = jax.eval_shape(init_params, rng)
    param_shardings = sharding_lib.tree_shardings(boxed, mesh, rules)
    abstract_params = nn.meta.unbox(boxed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, param_shardings,
        transform_non_params=lambda _: _replicated(mesh))
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt,
        rng=jax.eval_shape(lambda r: jax.random.key_data(r), rng))
    shardings = TrainState(step=_replicated(mesh), params=param_shardings,
                           opt_state=opt_shardings, rng=_replicated(mesh))
    return abstract, shardings


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the restore target for orbax."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def create_train_state(init_params: Callable, tx: optax.GradientTransformation, rng: jax.Array,
                       shardings: TrainState, params: Any = None) -> TrainState:
    """Initialises the state directly into its shardings (nothing lands on one device first).

    `params`, when given (e.g. restored pretrained weights), replaces the fresh ones.
    """
    def init(rng, params):
        if params is None:
            params = nn.meta.unbox(init_params(rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), rng=jax.random.key_data(rng))
    return jax.jit(init, out_shardings=shardings)(rng, params)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: Callable,
                    shardings: TrainState, batch_sharding: Any, microbatches: int = 1):
    """The jitted update: gradients (accumulated over `microbatches`), a guard that skips
    updates with a non-finite loss or gradient, the optimizer, and the step's metrics.

    The input state is donated: its buffers are reused for the new state.
    """
    def grads_of(params, batch, rng):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if microbatches == 1:
            (loss, aux), grads = grad_fn(params, batch, rng, False)
            return loss, aux, grads
        split = jax.tree_util.tree_map(
            lambda x: x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:]), batch)

        def accumulate(carry, xs):
            index, micro = xs
            (loss, aux), grads = grad_fn(params, micro, jax.random.fold_in(rng, index), False)
            summed = jax.tree_util.tree_map(jnp.add, carry, (loss, aux, grads))
            return summed, None
        zeros = jax.tree_util.tree_map(
            jnp.zeros_like, jax.eval_shape(lambda: grad_fn(params, jax.tree_util.tree_map(
                lambda x: x[0], split), rng, False)))
        zeros = (zeros[0][0], zeros[0][1], zeros[1])
        (loss, aux, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(microbatches), split))
        scale = 1.0 / microbatches
        return loss * scale, jax.tree_util.tree_map(lambda x: x * scale, aux), \
            jax.tree_util.tree_map(lambda g: g * scale, grads)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        loss, aux, grads = grads_of(state.params, batch, rng)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(operands):
            grads, opt_state, params = operands
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        # A non-finite step leaves params and optimizer state untouched; the step
        # counter still advances (its data was consumed). A branch rather than
        # `where(finite, new, old)` per leaf: the select reads each old Adam moment
        # after its donated buffer is overwritten, so XLA would copy every moment
        # first (measured on the gpt1 shape: +340 MiB temporaries, +4% step time).
        new_params, opt_state = jax.lax.cond(
            finite, update, lambda operands: (operands[2], operands[1]),
            (grads, state.opt_state, state.params))
        new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
                   "nonfinite": jnp.logical_not(finite).astype(jnp.int32), **aux}
        return new_state, metrics

    return jax.jit(step, in_shardings=(shardings, batch_sharding),
                   out_shardings=(shardings, None), donate_argnums=(0,),
                   compiler_options=train_step_compiler_options(batch_sharding))


def train_step_compiler_options(batch_sharding: Any) -> dict:
    """XLA options for the train step on the devices of `batch_sharding` (a sharding or a
    tree of them), not the process's default backend: an ahead-of-time compile for a TPU or
    GPU from a CPU host gets none of XLA:CPU's."""
    # XLA:CPU's default scheduler starts independent ops early so they can run
    # concurrently, which keeps their results alive longer: it hoists every block's
    # recomputation to the start of the backward pass, undoing model.remat. The
    # memory-optimised order costs no step time on CPU (gpt1 shape: -300 MiB peak).
    platforms = {device.platform for sharding in jax.tree_util.tree_leaves(batch_sharding)
                 for device in sharding.device_set}
    if platforms == {"cpu"}:
        return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    return {}


def make_eval_step(loss_fn: LossFn, param_shardings: Any, batch_sharding: Any):
    """The jitted deterministic loss (no dropout) of a batch."""
    def step(params, batch):
        loss, aux = loss_fn(params, batch, None, True)
        return {"loss": loss, **aux}
    return jax.jit(step, in_shardings=(param_shardings, batch_sharding))


@dataclasses.dataclass
class LoopConfig:
    num_steps: int                  # the schedule's length
    stop_at_step: int = 0           # stop after this step (0: run to num_steps)
    log_every_steps: int = 50
    eval_every_steps: int = 0       # 0: only at the end
    checkpoint_every_steps: int = 1000
    checkpoint_every_secs: float = 0.0  # > 0: also checkpoint when this long has passed since the last
    max_nonfinite_in_a_row: int = 10
    grace_period_secs: float = 30.0  # after SIGTERM/SIGINT, to commit a checkpoint (StopRequested)
    tokens_per_step: int = 0
    flops_per_step: float = 0.0
    peak_flops: float = 0.0         # all devices together; 0 leaves MFU out
    progress: bool = True


class NonFiniteError(UserError, RuntimeError):
    """Raised when too many consecutive steps had a NaN/Inf loss or gradient."""


def train_loop(state: TrainState, train_step, batches: Iterator, to_global: Callable,
               cfg: LoopConfig, writer, checkpointer, save_meta: dict,
               evaluate: Callable[[Any], dict] | None = None,
               stop_requested: StopRequested | None = None,
               on_eval: Callable[[int, dict], None] | None = None) -> tuple[TrainState, dict]:
    """Runs steps from `state.step` to the stop step, logging, evaluating and checkpointing.

    `batches` must expose grain's `get_state()`; `to_global` turns a host batch into a
    sharded global array. `stop_requested` is the job's StopRequested (so a signal that
    came before the loop is not lost); without one the loop installs its own. `on_eval`
    is called with (step, metrics) after each evaluation. Returns the final state and the
    last train/eval metrics.

    Every process takes the same decisions at the same step: to stop (a signal to any one
    of them), to checkpoint by time (process 0's clock), to give up on non-finite steps.
    """
    if stop_requested is None:
        with StopRequested(cfg.grace_period_secs) as stop_requested:
            return train_loop(state, train_step, batches, to_global, cfg, writer, checkpointer,
                              save_meta, evaluate, stop_requested, on_eval)
    from tqdm import tqdm
    start = int(state.step)
    stop = min(cfg.stop_at_step or cfg.num_steps, cfg.num_steps)
    last: dict = {}
    nonfinite_run = nonfinite_total = 0
    is_main = jax.process_index() == 0
    bar = tqdm(total=stop, initial=start, disable=not (cfg.progress and is_main),
               dynamic_ncols=True, desc="train")

    last_save = time.monotonic()

    def save(step):
        nonlocal last_save
        if checkpointer is not None:
            checkpointer.save(step, state, batches.get_state(), save_meta)
            last_save = time.monotonic()

    window_start, window_steps = time.perf_counter(), 0
    step = start
    while step < stop:
        batch = to_global(next(batches))
        state, metrics = train_step(state, batch)
        step += 1
        window_steps += 1
        do_eval = evaluate is not None and (step == stop or (
            cfg.eval_every_steps > 0 and step % cfg.eval_every_steps == 0))
        if step == start + 1 or step % cfg.log_every_steps == 0 or step == stop or do_eval:
            metrics = jax.device_get(metrics)
            elapsed = time.perf_counter() - window_start
            rate = window_steps / max(elapsed, 1e-9)
            window_start, window_steps = time.perf_counter(), 0
            last = {k: float(v) for k, v in metrics.items()}
            last["perplexity"] = float(np.exp(min(last["loss"], 50.0)))
            last["nonfinite_total"] = nonfinite_total + int(metrics["nonfinite"])
            if step > start + 1:  # the first window includes compilation
                last["tokens_per_sec"] = rate * cfg.tokens_per_step
                last["steps_per_sec"] = rate
                if cfg.peak_flops > 0:
                    last["mfu"] = rate * cfg.flops_per_step / cfg.peak_flops
            if do_eval:
                last.update({f"val_{k}": v for k, v in evaluate(state.params).items()})
                window_start = time.perf_counter()  # evaluation time is not training time
            writer.write(step, last)
            if do_eval and on_eval is not None:
                on_eval(step, last)
            bar.set_postfix(loss=f"{last['loss']:.3f}",
                            tok_s=f"{last.get('tokens_per_sec', 0):.0f}", refresh=False)
        else:
            # Between logs only the non-finite flag (a scalar) comes back to the
            # host. Reading it waits for the step to finish: the price of stopping
            # after exactly `max_nonfinite_in_a_row` bad steps.
            metrics = {"nonfinite": metrics["nonfinite"]}
        if int(metrics["nonfinite"]):
            nonfinite_run += 1
            nonfinite_total += 1
            if nonfinite_run >= cfg.max_nonfinite_in_a_row:
                bar.close()
                raise NonFiniteError(
                    f"{nonfinite_run} consecutive steps (up to step {step}) had a non-finite "
                    f"loss or gradient (train.max_nonfinite_in_a_row="
                    f"{cfg.max_nonfinite_in_a_row}); their updates were skipped and the job "
                    f"stopped. {_last_committed(checkpointer)}")
        else:
            nonfinite_run = 0
        bar.update(1)
        time_due = (cfg.checkpoint_every_secs > 0 and step % cfg.log_every_steps == 0
                    and distributed.agree_on_main(time.monotonic() - last_save >= cfg.checkpoint_every_secs))
        stopping = stop_requested.at_step(step)
        if step % cfg.checkpoint_every_steps == 0 or step == stop or time_due or stopping:
            save(step)
        if stopping:
            break
    bar.close()
    if checkpointer is not None:
        checkpointer.wait()
    if stop_requested.stopped:  # said only once the checkpoint is committed
        print(f"{stop_requested.signal_name}: checkpointed step {step}, exiting",
              file=sys.stderr, flush=True)
    return state, last


def _last_committed(checkpointer) -> str:
    """Where a stopped job stands: waits for a checkpoint still being written."""
    if checkpointer is None:
        return "No checkpoints are kept."
    checkpointer.wait()
    latest = checkpointer.latest_step()
    if latest is None:
        return "No checkpoint had been committed yet."
    return f"The last good checkpoint, step {latest}, is intact; a rerun resumes from it."


# ---------------------------------------------------------------------------------------------
# One run setup: mesh -> shardings -> checkpointer -> restore or create -> the jitted steps
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunSetup:
    """The plain settings a run is set up from (settings.run_setup reads them from a config)."""
    mesh: dict                       # axis sizes, e.g. {"data": -1, "fsdp": 1, "tensor": 1}
    rules: tuple                     # logical-axis rules
    batch_size: int                  # global
    microbatches: int = 1
    seed: int = 0
    max_to_keep: int | None = 3
    async_save: bool = True


@dataclasses.dataclass
class Run:
    """A run, set up: where its state lives, the state itself and its jitted steps."""
    mesh: Mesh
    rules: tuple
    abstract: TrainState             # shapes and dtypes
    shardings: TrainState
    state: TrainState
    checkpointer: Any                # checkpoint.Checkpointer, or None without a workdir
    resumed_from: int | None      # the restored step, or None for a fresh start
    data_state: dict | None       # the input iterator's state to continue from
    batch_sharding: Any              # a NamedSharding, or a dict of them for dict batches
    train_step: Callable
    eval_step: Callable


def setup_run(settings: RunSetup, init_params: Callable, loss_fn: LossFn,
              tx: optax.GradientTransformation, schedule: Callable, *, workdir=None,
              batch_ndims: Any = 2, initial_params: Callable[[Mesh, TrainState], Any] | None = None,
              devices=None, log: Callable[[str], None] = print) -> Run:
    """Sets a run up the one way every job (and the benchmark) does.

    Checks that the global batch splits over the data-parallel devices and microbatches,
    builds the state's shardings from the parameters' logical axes, and restores the
    workdir's latest finished checkpoint into them (saying so), or creates the state in
    place: from `initial_params(mesh, shardings)` when given (e.g. pre-trained weights),
    else freshly initialised. `batch_ndims` is the batch's rank, or a dict of ranks for a
    dict batch. Without a workdir there is no checkpointer.
    """
    from gpt1_jax import checkpoint as checkpoint_lib
    from gpt1_jax.errors import ConfigError
    mesh = sharding_lib.make_mesh(settings.mesh, devices)
    data_parallel = sharding_lib.data_parallel_size(mesh, settings.rules)
    if settings.microbatches < 1:
        raise ConfigError(f"train.microbatches={settings.microbatches} must be at least 1")
    if settings.batch_size % (data_parallel * settings.microbatches):
        raise ConfigError(
            f"train.batch_size={settings.batch_size} must be divisible by the data-parallel "
            f"devices ({data_parallel}) times train.microbatches ({settings.microbatches})")
    rng = jax.random.key(settings.seed)
    abstract, shardings = state_shardings(init_params, tx, rng, mesh, settings.rules)
    checkpointer = None if workdir is None else checkpoint_lib.Checkpointer(
        workdir, settings.max_to_keep, settings.async_save)
    restored = None if checkpointer is None else checkpointer.restore_latest(
        with_shardings(abstract, shardings))
    latest = data_state = None
    if restored is not None:
        latest, state, data_state, _ = restored
        if jax.process_index() == 0:
            log(f"Resuming from {checkpointer.directory / str(latest)}")
    else:
        params = None if initial_params is None else initial_params(mesh, shardings)
        state = create_train_state(init_params, tx, rng, shardings, params=params)
    if isinstance(batch_ndims, dict):
        batch_sharding = {k: sharding_lib.batch_sharding(mesh, settings.rules, n)
                          for k, n in batch_ndims.items()}
    else:
        batch_sharding = sharding_lib.batch_sharding(mesh, settings.rules, batch_ndims)
    train_step = make_train_step(loss_fn, tx, schedule, shardings, batch_sharding,
                                 settings.microbatches)
    eval_step = make_eval_step(loss_fn, shardings.params, batch_sharding)
    return Run(mesh, settings.rules, abstract, shardings, state, checkpointer, latest,
               data_state, batch_sharding, train_step, eval_step)
