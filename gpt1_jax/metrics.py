"""Task metrics of the paper's evaluation (numpy only).

Accuracy for NLI, QA and SST-2; F1 (and accuracy) for MRPC and QQP; Pearson and Spearman
correlation for STS-B; Matthews correlation for CoLA, following GLUE. Metrics that are
undefined on degenerate inputs (a constant prediction, no positive example) return 0.0 rather
than NaN, so that averages such as the GLUE score and "best checkpoint" comparisons stay usable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _as_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as flat arrays of the same, non-zero length."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"length mismatch: {y_true.size} targets, {y_pred.size} predictions")
    if y_true.size == 0:
        raise ValueError("metrics of an empty set are undefined")
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the target."""
    y_true, y_pred = _as_pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def f1(y_true, y_pred) -> float:
    """Binary F1 of the positive class 1: 2·TP / (2·TP + FP + FN); 0.0 with no positives."""
    y_true, y_pred = _as_pair(y_true, y_pred)
    true_pos, pred_pos = y_true == 1, y_pred == 1
    tp = np.sum(true_pos & pred_pos)
    denominator = np.sum(true_pos) + np.sum(pred_pos)
    return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(y_true, y_pred) -> float:
    """Matthews correlation (the multi-class form, which reduces to the usual binary one).

    MCC = (c·s - t·p) / sqrt((s² - p·p)(s² - t·t)), with per-class counts t (targets) and
    p (predictions), c correct and s total; 0.0 when undefined (e.g. a constant prediction).
    """
    y_true, y_pred = _as_pair(y_true, y_pred)
    classes, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    true_codes, pred_codes = codes[: y_true.size], codes[y_true.size:]
    # Python ints from here on: s² overflows int64 only for huge sets, but floats would lose
    # exactness for no benefit.
    t = [int(n) for n in np.bincount(true_codes, minlength=classes.size)]
    p = [int(n) for n in np.bincount(pred_codes, minlength=classes.size)]
    c, s = int(np.sum(true_codes == pred_codes)), int(y_true.size)
    t_dot_p = sum(a * b for a, b in zip(t, p))
    denominator = (s * s - sum(n * n for n in p)) * (s * s - sum(n * n for n in t))
    if denominator == 0:
        return 0.0
    return float((c * s - t_dot_p) / np.sqrt(float(denominator)))


def pearson(x, y) -> float:
    """Pearson correlation; 0.0 when either input is constant (the correlation is undefined)."""
    x, y = _as_pair(x, y)
    x_centered = x.astype(np.float64) - np.mean(x, dtype=np.float64)
    y_centered = y.astype(np.float64) - np.mean(y, dtype=np.float64)
    denominator = np.sqrt(np.sum(x_centered**2) * np.sum(y_centered**2))
    if denominator == 0:
        return 0.0
    # Clip: rounding can push a perfect correlation a hair past ±1.
    return float(np.clip(np.sum(x_centered * y_centered) / denominator, -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values all get the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse]


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties share their mean rank)."""
    x, y = _as_pair(x, y)
    return pearson(_average_ranks(x), _average_ranks(y))


METRIC_FNS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}

# The metric keys reported for each task, first the one the paper's tables use.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "mnli": ("accuracy",),
    "snli": ("accuracy",),
    "scitail": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "race": ("accuracy",),
    "race/middle": ("accuracy",),
    "race/high": ("accuracy",),
    "story_cloze": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "cola": ("mcc",),
    "sst2": ("accuracy",),
}


def compute_metrics(task_name: str, y_true, y_pred) -> dict[str, float]:
    """All metrics of a task, e.g. `{"f1": 0.82, "accuracy": 0.75}` for MRPC.

    `y_pred` holds predicted labels (class indices, or the chosen answer for multiple choice);
    for STS-B, the predicted scores.
    """
    if task_name not in TASK_METRICS:
        raise ValueError(f"unknown task {task_name!r}; known: {', '.join(TASK_METRICS)}")
    return {key: METRIC_FNS[key](y_true, y_pred) for key in TASK_METRICS[task_name]}
