"""Harness runs on this project's models: the command's run (results JSON + markdown table into
the run directory) and the callable a pre-training job runs every N steps.

Everything is offline: the harness's datasets and hub are told so before they are imported,
tasks read local files (this package's tasks take their data from task metadata,
`--metadata`, or variables such as `$GPT1_JAX_GLUE_DIR`: tasks/gpt1_zero_shot/utils.py), and a task whose data is not
here is reported as a `DataError` naming what is missing.
"""
import datetime
import difflib
import json
import os
from collections.abc import Sequence

for _offline in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
    os.environ.setdefault(_offline, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lm_eval  # noqa: E402  (after the offline switches: datasets reads them on import)
import lm_eval.utils  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from gpt1_jax import loading  # noqa: E402
from gpt1_jax import model as model_lib  # noqa: E402
from gpt1_jax.errors import ConfigError, DataError  # noqa: E402
from gpt1_jax.evaluation import harness  # noqa: E402
from gpt1_jax.evaluation.harness import model as harness_model  # noqa: E402
from gpt1_jax.storage import rundir  # noqa: E402

RESULTS_DIR = "harness"   # inside the evaluated run directory


def task_manager(tasks: Sequence[str], include_paths: Sequence[str] = (),
                 metadata: dict | None = None) -> TaskManager:
    """A TaskManager that knows `tasks`: this package's (`harness.TASKS_DIR`) and
    `include_paths`' first, the harness's own thousands only when a task is not among them
    (indexing those takes 15-20 s). ConfigError for a task nobody knows."""
    paths = [harness.TASKS_DIR, *include_paths]
    manager = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    if not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=paths, metadata=metadata)
    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            raise ConfigError(f"--tasks: unknown harness task {name!r}"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))
    return manager


def run(lm, tasks: Sequence[str], manager: TaskManager, limit: float | None = None,
        num_fewshot: int | None = None, log_samples: bool = False, **harness_args) -> dict:
    """`lm_eval.simple_evaluate` on `lm` (a harness LM, or a harness model name with its
    `model_args=` among `harness_args`); a task whose data is missing raises DataError."""
    try:
        return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                       num_fewshot=num_fewshot, log_samples=log_samples,
                                       bootstrap_iters=0, **harness_args)
    except FileNotFoundError as e:
        raise DataError(f"a task's data is not here: {e}") from e
    except ConnectionError as e:
        # With the hub offline, a task that reads a hub dataset not in the local cache ends here.
        raise DataError(f"a task needs data from the Hugging Face hub, and this run is offline "
                        f"(HF_DATASETS_OFFLINE=1): {e}") from e


def metrics(results: dict) -> dict[str, float]:
    """{"<task>/<metric>": value} of every numeric metric (stderrs left out)."""
    out = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            metric = key.split(",")[0]
            if isinstance(value, (int, float)) and not metric.endswith("_stderr") and metric != "sample_len":
                out[f"{task}/{metric}"] = float(value)
    return out


def table(results: dict) -> str:
    """The harness's own markdown table of the results."""
    return lm_eval.utils.make_table(results)


def write(results: dict, output_dir) -> tuple[str, str]:
    """Writes `<output_dir>/harness/results_<time>.json` and the table beside it (`.md`)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    directory = rundir.path(output_dir) / RESULTS_DIR
    json_path, table_path = directory / f"results_{stamp}.json", directory / f"results_{stamp}.md"
    rundir.write_text(json_path, json.dumps(results, indent=2, default=lm_eval.utils.handle_non_serializable))
    rundir.write_text(table_path, table(results))
    return str(json_path), str(table_path)


class PretrainingEvaluator:
    """params -> {"harness/<task>/<metric>": value}, for a pre-training job to call at every
    evaluation (`train.eval_every_steps`, and step 0) and log like the validation loss.

    Built once: the tasks are checked at once, the model and its scoring programs are made
    at the first call and reused (new parameters, same shapes: nothing recompiles).
    """

    def __init__(self, config: model_lib.ModelConfig, tokenizer, tasks: Sequence[str],
                 limit: float | None = None, batch_size: int = 32, include_paths: Sequence[str] = ()):
        self.config, self.tokenizer, self.tasks = config, tokenizer, list(tasks)
        self.limit, self.batch_size = limit, batch_size
        self.manager = task_manager(self.tasks, include_paths)
        self.lm: harness_model.GPT1LM | None = None

    def __call__(self, params) -> dict[str, float]:
        if self.lm is None:
            self.lm = harness_model.GPT1LM(loaded=loading.LoadedModel(self.config, params, self.tokenizer),
                                           batch_size=self.batch_size, progress=False)
        else:
            self.lm.scorer.set_params(params)
        results = run(self.lm, self.tasks, self.manager, limit=self.limit)
        return {f"harness/{key}": value for key, value in metrics(results).items()}
