"""The one run setup every job, the benchmark and the ahead-of-time compile share.

    plan = plan_run(settings, init_params, loss_fn, tx, schedule)   # nothing allocated
    run = setup_run(settings, init_params, loss_fn, tx, schedule, workdir=workdir)
    # = the plan, then the workdir's latest checkpoint restored into it, or a fresh state

The plan is mesh -> checks -> abstract state and its shardings -> batch sharding -> the
jitted train and eval steps; it holds no array, so `tools/aot.py` lowers its steps for
devices this machine does not have.
"""
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from gpt1_jax import sharding as sharding_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.train import train_state


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
class Plan:
    """Where a run's state and batches live and its jitted steps, before any state exists."""
    mesh: Mesh
    rules: tuple
    abstract: train_state.TrainState       # shapes and dtypes
    shardings: train_state.TrainState
    batch_sharding: Any              # a NamedSharding, or a dict of them for dict batches
    train_step: Callable
    eval_step: Callable


@dataclasses.dataclass
class Run(Plan):
    """A run, set up: its plan, the state itself and where it is checkpointed."""
    state: train_state.TrainState
    checkpointer: Any                # checkpoint.Checkpointer, or None without a workdir
    resumed_from: int | None         # the restored step, or None for a fresh start
    data_state: dict | None          # the input iterator's state to continue from


def plan_run(settings: RunSetup, init_params: Callable, loss_fn: train_state.LossFn,
             tx: optax.GradientTransformation, schedule: Callable, *, batch_ndims: Any = 2,
             devices=None) -> Plan:
    """The mesh over `devices` (default: all), the checks that the global batch splits over
    the data-parallel devices and microbatches, the state's shardings from the parameters'
    logical axes, and the jitted steps. `batch_ndims` is the batch's rank, or a dict of
    ranks for a dict batch."""
    mesh = sharding_lib.make_mesh(settings.mesh, devices)
    data_parallel = sharding_lib.data_parallel_size(mesh, settings.rules)
    if settings.microbatches < 1:
        raise ConfigError(f"train.microbatches={settings.microbatches} must be at least 1")
    if settings.batch_size % (data_parallel * settings.microbatches):
        raise ConfigError(
            f"train.batch_size={settings.batch_size} must be divisible by the data-parallel "
            f"devices ({data_parallel}) times train.microbatches ({settings.microbatches})")
    abstract, shardings = train_state.state_shardings(init_params, tx, jax.random.key(settings.seed), mesh,
                                                settings.rules)
    if isinstance(batch_ndims, dict):
        batch_sharding = {k: sharding_lib.batch_sharding(mesh, settings.rules, n)
                          for k, n in batch_ndims.items()}
    else:
        batch_sharding = sharding_lib.batch_sharding(mesh, settings.rules, batch_ndims)
    train_step = train_state.make_train_step(loss_fn, tx, schedule, shardings, batch_sharding, settings.microbatches)
    eval_step = train_state.make_eval_step(loss_fn, shardings.params, batch_sharding)
    return Plan(mesh, settings.rules, abstract, shardings, batch_sharding, train_step, eval_step)


def setup_run(settings: RunSetup, init_params: Callable, loss_fn: train_state.LossFn,
              tx: optax.GradientTransformation, schedule: Callable, *, workdir=None,
              batch_ndims: Any = 2, initial_params: Callable[[Plan], Any] | None = None,
              devices=None, log: Callable[[str], None] = print) -> Run:
    """`plan_run`, then the state: the workdir's latest finished checkpoint restored into
    the plan's shardings (saying so), or a state created in place, from
    `initial_params(plan)` when it returns params (e.g. pre-trained weights), else freshly
    initialised. Without a workdir there is no checkpointer.
    """
    from gpt1_jax import checkpoint as checkpoint_lib  # orbax, only for a run that is set up
    plan = plan_run(settings, init_params, loss_fn, tx, schedule, batch_ndims=batch_ndims, devices=devices)
    checkpointer = None if workdir is None else checkpoint_lib.Checkpointer(
        workdir, settings.max_to_keep, settings.async_save)
    restored = None if checkpointer is None else checkpointer.restore_latest(
        train_state.with_shardings(plan.abstract, plan.shardings))
    latest = data_state = None
    if restored is not None:
        latest, state, data_state, _ = restored
        if jax.process_index() == 0:
            log(f"Resuming from {checkpointer.directory / str(latest)}")
    else:
        params = None if initial_params is None else initial_params(plan)
        state = train_state.create_train_state(init_params, tx, jax.random.key(settings.seed), plan.shardings,
                                         params=params)
    return Run(**{field.name: getattr(plan, field.name) for field in dataclasses.fields(Plan)},
               state=state, checkpointer=checkpointer, resumed_from=latest, data_state=data_state)
