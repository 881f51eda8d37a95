"""The end both jobs share: the export, the job's last words, the curves and the summary.

    summary = finish.finish(workdir, state, last, finish.Ending(num_steps, started, ...))

A finished run (its step reached `num_steps`) is exported first, so a summary that says
`finished` never points at a missing export; a run stopped early only updates its summary.
"""
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax

from gpt1_jax import loading
from gpt1_jax import model as model_lib
from gpt1_jax.storage import rundir


@dataclasses.dataclass(frozen=True)
class Ending:
    """What a job hands its finish besides the final state and the loop's last metrics."""
    num_steps: int
    started: float                   # time.time() when the loop started
    model_config: model_lib.ModelConfig
    tokenizer: Any
    values: dict                     # the job's own summary entries
    task: dict | None = None         # a fine-tuned model's {"task", "max_len"} for its export
    # Called with the final params of a finished run; its dict joins the summary
    # (the pre-training sample, the fine-tuned task metrics).
    when_finished: Callable[[Any], dict] | None = None
    # The summary so far -> curves.png's bytes, drawn by process 0.
    curves: Callable[[dict], bytes] | None = None


def finish(workdir, state, last: dict, ending: Ending) -> dict:
    """Writes what a run leaves (export, curves, `summary.json`) and returns the summary."""
    step = int(state.step)
    finished = step >= ending.num_steps
    values = {**ending.values, "step": step, "num_steps": ending.num_steps, "finished": finished,
              "train_loss": last.get("loss"), "seconds_this_run": round(time.time() - ending.started, 1)}
    if finished:
        export(rundir.path(workdir) / rundir.EXPORT, state.params, ending.model_config, ending.tokenizer,
               ending.task)
        if ending.when_finished is not None:
            values.update(ending.when_finished(state.params))
    is_main = jax.process_index() == 0
    if is_main and ending.curves is not None:
        rundir.write_bytes(rundir.path(workdir) / rundir.CURVES, ending.curves(values))
    return rundir.update_summary(workdir, values, write=is_main)


def export(directory, params, model_config: model_lib.ModelConfig, tokenizer, task: dict | None = None) -> None:
    """The params export (`loading.write_export`), always per layer (h_0, h_1, ...) whatever
    layout the run trained with: its readers (fine-tuning, conversion) expect that."""
    if model_config.scan_layers:
        params = jax.jit(model_lib.per_layer_params)(params)
        model_config = dataclasses.replace(model_config, scan_layers=False)
    loading.write_export(directory, params, dataclasses.asdict(model_config), tokenizer, task=task)
