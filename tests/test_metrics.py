"""Task metrics against values worked out by hand."""

import numpy as np
import pytest

from gpt1_jax import metrics


def test_accuracy():
    # Matches at positions 0, 1, 3: 3 of 5.
    assert metrics.accuracy([0, 1, 1, 0, 1], [0, 1, 0, 0, 0]) == pytest.approx(0.6)


def test_f1_of_the_positive_class():
    # TP = 2 (positions 0, 4), FP = 1 (position 2), FN = 1 (position 1): 2·2 / (2·2 + 1 + 1).
    assert metrics.f1([1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 0]) == pytest.approx(4 / 6)


def test_f1_without_any_positive_is_zero():
    assert metrics.f1([0, 0, 0], [0, 0, 0]) == 0.0
    assert metrics.f1([1, 1], [0, 0]) == 0.0


def test_matthews_binary():
    # TP 2, TN 2, FP 1, FN 1: (2·2 - 1·1) / sqrt(3·3·3·3) = 1/3.
    assert metrics.matthews_corrcoef([1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 0]) == pytest.approx(1 / 3)


def test_matthews_perfect_and_inverted():
    assert metrics.matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert metrics.matthews_corrcoef([0, 1, 1, 0], [1, 0, 0, 1]) == pytest.approx(-1.0)


def test_matthews_constant_prediction_is_zero():
    assert metrics.matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0
    assert metrics.matthews_corrcoef([1, 1, 1], [1, 1, 1]) == 0.0


def test_matthews_multiclass():
    # t = [2, 2, 2], p = [3, 1, 2], c = 3, s = 6:
    # (3·6 - (6 + 2 + 4)) / sqrt((36 - 14)(36 - 12)) = 6 / sqrt(528).
    value = metrics.matthews_corrcoef([0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 2])
    assert value == pytest.approx(6 / np.sqrt(528))


def test_pearson():
    # Deviations x: -1.5 -0.5 0.5 1.5, y: -3 -1 0 4; sum of products 11, sums of squares 5, 26.
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / np.sqrt(130))


def test_pearson_of_a_constant_is_zero():
    assert metrics.pearson([1, 2, 3], [2, 2, 2]) == 0.0


def test_spearman_is_one_for_any_increasing_relation():
    assert metrics.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [64, 27, 8, 1]) == pytest.approx(-1.0)


def test_spearman_averages_tied_ranks():
    # Ranks x: 1 2.5 2.5 4, y: 1 3 2 4; deviations -1.5 0 0 1.5 and -1.5 .5 -.5 1.5:
    # 4.5 / sqrt(4.5 · 5) = sqrt(0.9).
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(np.sqrt(0.9))


def test_average_ranks():
    ranks = metrics._average_ranks(np.array([10, 20, 20, 20, 5]))
    np.testing.assert_array_equal(ranks, [2, 4, 4, 4, 1])


def test_correlations_agree_with_scipy_on_random_data():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=200).astype(float)  # many ties
    y = x + rng.normal(size=200)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


def test_length_mismatch_and_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="length mismatch"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy([], [])


def test_compute_metrics_keys_per_task():
    assert set(metrics.compute_metrics("sst2", [0, 1], [0, 1])) == {"accuracy"}
    assert set(metrics.compute_metrics("mrpc", [0, 1], [0, 1])) == {"f1", "accuracy"}
    assert set(metrics.compute_metrics("qqp", [0, 1], [0, 1])) == {"f1", "accuracy"}
    assert set(metrics.compute_metrics("stsb", [0.5, 3.0], [1.0, 2.0])) == {"pearson", "spearman"}
    assert set(metrics.compute_metrics("cola", [0, 1], [0, 1])) == {"mcc"}
    for task in ("mnli", "snli", "scitail", "qnli", "rte", "race", "race/middle", "race/high",
                 "story_cloze"):
        assert set(metrics.compute_metrics(task, [0, 2], [0, 1])) == {"accuracy"}


def test_compute_metrics_values():
    result = metrics.compute_metrics("mrpc", [1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 0])
    assert result == pytest.approx({"f1": 4 / 6, "accuracy": 4 / 6})


def test_compute_metrics_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'wnli'; known: mnli"):
        metrics.compute_metrics("wnli", [0], [0])
