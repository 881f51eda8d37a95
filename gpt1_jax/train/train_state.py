"""The train state and its jitted, sharded steps.

    abstract, shardings = state_shardings(init_params, tx, rng, mesh, rules)
    state = create_train_state(init_params, tx, rng, shardings)
    train_step = make_train_step(loss_fn, tx, schedule, shardings, batch_sharding)
    state, metrics = train_step(state, batch)

A job supplies `init_params(rng) -> boxed params` (Flax parameters with logical axis names)
and `loss_fn(params, batch, rng, deterministic) -> (loss, aux)`. The state is created
abstractly (`jax.eval_shape`), its shardings are derived from the parameters' logical
axes, and it is initialised directly into them.
"""
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpt1_jax import sharding as sharding_lib

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
