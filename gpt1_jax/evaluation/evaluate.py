"""Evaluation of fine-tuned models: predictions, task metrics, GLUE submission files."""
import csv
import io

import jax
import numpy as np

from gpt1_jax import metrics
from gpt1_jax.data import task_data as task_data_lib
from gpt1_jax.storage import rundir


def predict(model, params, arrays: dict, batch_size: int) -> np.ndarray:
    """Predictions for every example: class ids, answer ids, or regression values."""
    forward = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c, with_lm=False)[0])
    n = len(arrays["label"])
    outputs = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        tokens, pos = arrays["tokens"][start:stop], arrays["classify_pos"][start:stop]
        if stop - start < batch_size:  # pad the last batch: one compiled shape
            pad = batch_size - (stop - start)
            tokens = np.concatenate([tokens, np.repeat(tokens[-1:], pad, 0)])
            pos = np.concatenate([pos, np.repeat(pos[-1:], pad, 0)])
        outputs.append(np.asarray(forward(params, tokens, pos))[:stop - start])
    out = np.concatenate(outputs)
    return out if model.target == "regression" else out.argmax(-1)


def evaluate_splits(model, params, data: task_data_lib.TaskData, batch_size: int, workdir=None) -> dict:
    """Metrics of every evaluation split; with `workdir`, the predictions too."""
    results = {}
    for split, arrays in data.evals.items():
        predictions = predict(model, params, arrays, batch_size)
        labels = arrays["label"]
        if data.spec.target == "regression":
            labelled = ~np.isnan(labels)
        else:
            labelled = labels >= 0
        if labelled.any():
            results[split] = compute_task_metrics(data.spec.name, labels[labelled], predictions[labelled])
        if workdir is not None:
            write_predictions(workdir, data.spec, split, data.eval_examples[split], predictions)
    return results


def compute_task_metrics(task_name: str, labels, predictions) -> dict:
    # race/middle and race/high are scored like RACE.
    return metrics.compute_metrics(task_name.split("/")[0], labels, predictions)


# GLUE's submission file names.
_GLUE_FILES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
               "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE"}


def write_predictions(workdir, spec, split: str, examples, predictions):
    """Writes `<workdir>/predictions/<TASK>[-split].tsv` in the GLUE submission format:
    a header `index<TAB>prediction`, then one row per example, labels by name for the
    NLI tasks, class ids for the others, scores for STS-B."""
    directory = rundir.path(workdir) / rundir.PREDICTIONS
    stem = _GLUE_FILES.get(spec.name, spec.name.replace("/", "-"))
    if spec.name == "mnli":
        stem += "-m" if split.endswith("_matched") else "-mm"
    path = directory / f"{stem}.{split}.tsv"
    if jax.process_index() != 0:
        return path
    with io.StringIO(newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "prediction"])
        for example, prediction in zip(examples, predictions):
            if spec.target == "regression":
                value = f"{float(prediction):.3f}"
            elif spec.kind == "entailment" and spec.name in _GLUE_FILES:
                value = spec.label_names[int(prediction)]
            else:
                value = int(prediction)
            writer.writerow([example.uid, value])
        rundir.write_text(path, f.getvalue())
    return path
