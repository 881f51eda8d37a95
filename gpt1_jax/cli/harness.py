r"""Evaluates a model on lm-evaluation-harness tasks (gpt1_jax/evaluation/harness/).

    python -m gpt1_jax.cli.harness --init_from=runs/demo --tasks=gpt1_sst2,gpt1_story_cloze
    python -m gpt1_jax.cli.harness --init_from=gs://bucket/runs/gpt1/export --tasks=... --output_dir=out
    python -m gpt1_jax.cli.harness --init_from=runs/tiny --tasks=a,b --include_path=my_tasks \
        --bench=3 --hf_export=runs/tiny_hf     # median of 3 runs, beside the harness's `hf` backend

`init_from` is anything `loading.load` reads (a workdir, checkpoint or export; local or gs://).
Writes `<output_dir>/harness/results_<time>.json` (the harness's results) and `.md` (its
table; output_dir defaults to init_from) and prints the table.
"""
import json
import statistics
import time

from absl import app, flags

from gpt1_jax.cli import common
from gpt1_jax.errors import ConfigError

_INIT_FROM = flags.DEFINE_string("init_from", None, "A workdir, checkpoint or export (local or gs://).",
                                 required=True)
_TASKS = flags.DEFINE_list("tasks", None, "Harness task names, comma-separated.", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "", "Where results go ('' = init_from).")
_INCLUDE_PATH = flags.DEFINE_list("include_path", [], "More task YAML directories.")
_METADATA = flags.DEFINE_string("metadata", "", "JSON passed to the tasks (e.g. data directories).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Rows per forward pass (rounded up to the devices).",
                                  lower_bound=1)
_LIMIT = flags.DEFINE_float("limit", None, "At most this many documents per task (< 1: a fraction).",
                             lower_bound=1e-9)
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples (None: the task's).",
                                   lower_bound=0)
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "Context used (None: the model's).",
                                  lower_bound=1)
_BENCH = flags.DEFINE_integer("bench", 0, "Time this many runs and print the median (0: evaluate; "
                             "nothing is written when timing).", lower_bound=0)
_HF_EXPORT = flags.DEFINE_string("hf_export", "", "With --bench: also time the harness's `hf` backend "
                                 "on this HF export of the same weights.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from gpt1_jax.evaluation.harness import evaluate, model  # the harness is an extra: imported when used
    try:
        metadata = json.loads(_METADATA.value or "{}")
    except json.JSONDecodeError as e:
        raise ConfigError(f"--metadata is not JSON: {e}") from e
    evaluate.task_manager(_TASKS.value, _INCLUDE_PATH.value)   # an unknown task fails before loading
    lm = model.GPT1LM(init_from=_INIT_FROM.value, batch_size=_BATCH_SIZE.value, max_length=_MAX_LENGTH.value)
    # Tasks that need the model's tokenizer (the zero-shot tasks' token counts) find it here.
    metadata = {"tokenizer": str(lm.loaded.source.tokenizer_dir), **metadata}
    manager = evaluate.task_manager(_TASKS.value, _INCLUDE_PATH.value, metadata)
    if _BENCH.value:
        _bench(lm, manager, evaluate)
        return
    results = evaluate.run(lm, _TASKS.value, manager, _LIMIT.value, _NUM_FEWSHOT.value)
    json_path, _ = evaluate.write(results, _OUTPUT_DIR.value or _INIT_FROM.value)
    print(evaluate.table(results))
    print(f"results: {json_path}")


def _bench(lm, manager, evaluate) -> None:
    def median_seconds(model) -> float:
        times = []
        for _ in range(_BENCH.value):
            start = time.perf_counter()
            evaluate.run(model, _TASKS.value, manager, _LIMIT.value, _NUM_FEWSHOT.value)
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    report = {"gpt1_jax_s": median_seconds(lm)}
    if _HF_EXPORT.value:
        import lm_eval.api.registry
        hf = lm_eval.api.registry.get_model("hf").create_from_arg_string(
            f"pretrained={_HF_EXPORT.value},dtype=float32",
            {"batch_size": _BATCH_SIZE.value, "device": "cpu"})
        report["hf_s"] = median_seconds(hf)
    print(json.dumps({"runs": _BENCH.value, "tasks": _TASKS.value, **report}))


if __name__ == "__main__":
    common.run(main, "harness")
