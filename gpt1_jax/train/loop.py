"""The training loop: steps from where the run stands to its stop step, with logging,
evaluation, checkpoints, the non-finite guard's count and a stop on signals.

    state, last = train_loop(run, batches, to_global, LoopConfig(num_steps=1000), writer, save_meta)

Every process takes the same decisions at the same step: to stop (a signal to any one of
them), to checkpoint by time (process 0's clock), to give up on non-finite steps.
"""
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from gpt1_jax import distributed
from gpt1_jax.errors import UserError
from gpt1_jax.train.stopping import StopRequested
from gpt1_jax.train.train_state import TrainState


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


def train_loop(run, batches: Iterator, to_global: Callable, cfg: LoopConfig, writer, save_meta: dict,
               evaluate: Callable[[Any], dict] | None = None,
               stop_requested: StopRequested | None = None,
               on_eval: Callable[[int, dict], None] | None = None) -> tuple[TrainState, dict]:
    """Runs `run.train_step` from `run.state` to the stop step; returns the final state and
    the last train/eval metrics.

    `run` is a `run_setup.Run` (the loop reads its `state`, `train_step` and `checkpointer`,
    which may be None). `batches` must expose grain's `get_state()`; `to_global` turns a
    host batch into a sharded global array. `stop_requested` is the job's StopRequested (so
    a signal that came before the loop is not lost); without one the loop installs its own.
    `on_eval` is called with (step, metrics) after each evaluation.
    """
    if stop_requested is None:
        with StopRequested(cfg.grace_period_secs) as stop_requested:
            return train_loop(run, batches, to_global, cfg, writer, save_meta, evaluate, stop_requested, on_eval)
    from tqdm import tqdm
    state, checkpointer = run.state, run.checkpointer
    start = int(state.step)
    stop = min(cfg.stop_at_step or cfg.num_steps, cfg.num_steps)
    bar = tqdm(total=stop, initial=start, disable=not (cfg.progress and jax.process_index() == 0),
               dynamic_ncols=True, desc="train")
    last: dict = {}
    nonfinite_run = nonfinite_total = 0
    last_save = time.monotonic()
    window = _Window()
    step = start
    while step < stop:
        state, metrics = run.train_step(state, to_global(next(batches)))
        step += 1
        window.steps += 1
        do_eval = evaluate is not None and (step == stop or (
            cfg.eval_every_steps > 0 and step % cfg.eval_every_steps == 0))
        if step == start + 1 or step % cfg.log_every_steps == 0 or step == stop or do_eval:
            metrics, rate = jax.device_get(metrics), window.rate()
            # The first window includes compilation: no throughput from it.
            last = _logged(metrics, cfg, rate if step > start + 1 else None,
                           nonfinite_total + int(metrics["nonfinite"]))
            if do_eval:
                last.update({f"val_{k}": v for k, v in evaluate(state.params).items()})
                window.restart()  # evaluation time is not training time
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
                    f"loss or gradient (train.max_nonfinite_in_a_row={cfg.max_nonfinite_in_a_row}); "
                    f"their updates were skipped and the job stopped. {_last_committed(checkpointer)}")
        else:
            nonfinite_run = 0
        bar.update(1)
        time_due = (cfg.checkpoint_every_secs > 0 and step % cfg.log_every_steps == 0
                    and distributed.agree_on_main(time.monotonic() - last_save >= cfg.checkpoint_every_secs))
        stopping = stop_requested.at_step(step)
        if checkpointer is not None and (step % cfg.checkpoint_every_steps == 0 or step == stop
                                         or time_due or stopping):
            checkpointer.save(step, state, batches.get_state(), save_meta)
            last_save = time.monotonic()
        if stopping:
            break
    bar.close()
    if checkpointer is not None:
        checkpointer.wait()
    if stop_requested.stopped:  # said only once the checkpoint is committed
        print(f"{stop_requested.signal_name}: checkpointed step {step}, exiting", file=sys.stderr, flush=True)
    return state, last


class _Window:
    """Training steps per second since the last log, evaluations left out."""

    def __init__(self):
        self.start, self.steps = time.perf_counter(), 0

    def rate(self) -> float:
        rate = self.steps / max(time.perf_counter() - self.start, 1e-9)
        self.start, self.steps = time.perf_counter(), 0
        return rate

    def restart(self) -> None:
        self.start = time.perf_counter()


def _logged(metrics: dict, cfg: LoopConfig, rate: float | None, nonfinite_total: int) -> dict:
    """A logged step's metrics as floats, with its throughput (`rate` steps/s, or None)."""
    last = {k: float(v) for k, v in metrics.items()}
    last["perplexity"] = float(np.exp(min(last["loss"], 50.0)))
    last["nonfinite_total"] = nonfinite_total
    if rate is not None:
        last["tokens_per_sec"] = rate * cfg.tokens_per_step
        last["steps_per_sec"] = rate
        if cfg.peak_flops > 0:
            last["mfu"] = rate * cfg.flops_per_step / cfg.peak_flops
    return last


def _last_committed(checkpointer) -> str:
    """Where a stopped job stands: waits for a checkpoint still being written."""
    if checkpointer is None:
        return "No checkpoints are kept."
    checkpointer.wait()
    latest = checkpointer.latest_step()
    if latest is None:
        return "No checkpoint had been committed yet."
    return f"The last good checkpoint, step {latest}, is intact; a rerun resumes from it."
