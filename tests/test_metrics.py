"""UAR / WAR / confusion matrix, against hand-computed cases."""

import numpy as np
import pytest

from former_dfer_jax.training import metrics

NAMES = ['a', 'b', 'c']


def test_confusion_matrix_counts_true_rows_predicted_columns():
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 2, 0, 2])
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, preds, 3), expected)


def test_masked_clips_are_not_counted():
    labels = np.array([0, 1, 1, 0])
    preds = np.array([0, 1, 0, 1])
    mask = np.array([True, True, False, False])
    matrix = metrics.confusion_matrix(labels, preds, 2, mask)
    np.testing.assert_array_equal(matrix, [[1, 0], [0, 1]])
    assert metrics.war(matrix) == 1.0


def test_war_is_accuracy_and_uar_is_mean_recall():
    # class a: 1/2 right, b: 1/1, c: 2/3 -> WAR 4/6, UAR (0.5 + 1 + 2/3) / 3
    matrix = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert metrics.war(matrix) == pytest.approx(4 / 6)
    assert metrics.uar(matrix) == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    np.testing.assert_allclose(metrics.per_class_recall(matrix), [0.5, 1.0, 2 / 3])


def test_uar_ignores_classes_without_clips_and_reports_them_as_none():
    matrix = np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0]])
    assert metrics.uar(matrix) == pytest.approx((1.0 + 0.5) / 2)
    summary = metrics.summarize(matrix, NAMES)
    assert summary['per_class_recall'] == {'a': 1.0, 'b': 0.5, 'c': None}
    assert summary['num_clips'] == 4


def test_always_predicting_the_majority_class_has_high_war_but_low_uar():
    labels = np.array([0] * 8 + [1, 2])
    matrix = metrics.confusion_matrix(labels, np.zeros_like(labels), 3)
    assert metrics.war(matrix) == pytest.approx(0.8)
    assert metrics.uar(matrix) == pytest.approx(1 / 3)


def test_pooled_metrics_are_those_of_summed_matrices():
    fold1 = np.array([[3, 1], [0, 0]])
    fold2 = np.array([[0, 0], [1, 1]])
    pooled = fold1 + fold2
    assert metrics.war(pooled) == pytest.approx(4 / 6)
    assert metrics.uar(pooled) == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_table_has_per_class_uar_war_in_percent():
    summary = metrics.summarize(np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]]), NAMES)
    table = metrics.format_table({'run': summary}, NAMES)
    header, _, row = table.splitlines()
    assert header == '|  | a | b | c | UAR | WAR |'
    assert row == '| run | 50.00 | 100.00 | 66.67 | 72.22 | 66.67 |'


def test_the_confusion_matrix_figure_shows_full_names_percentages_and_counts():
    names = ['happiness', 'sadness', 'fear']
    figure = metrics.confusion_matrix_figure(np.array([[9, 1, 0], [0, 5, 5], [0, 0, 3]]), names)
    axes, colour_bar = figure.axes
    assert [t.get_text() for t in axes.get_xticklabels()] == names  # never cut ("fe")
    assert [t.get_text() for t in axes.get_yticklabels()] == names
    cells = [t.get_text() for t in axes.texts]
    assert cells[:3] == ['90%\n9', '10%\n1', '0%\n0']  # row-normalised, with counts
    assert cells[4:6] == ['50%\n5', '50%\n5']
    assert 'recall' in colour_bar.get_ylabel()
    assert min(t.get_fontsize() for t in axes.texts) >= 10  # the saved PNG: large


DFEW_NAMES = ('happiness', 'sadness', 'neutral', 'anger', 'surprise', 'disgust', 'fear')


def test_tensorboards_image_fits_its_image_card_with_readable_numbers():
    # TensorBoard's image tab scales an image down to its card (~350 px wide); one within
    # that width is shown at its own size, where 6.5 pt at 100 dpi is 9 px text.
    image = metrics.confusion_matrix_image(np.diag([5] * 7), DFEW_NAMES)
    assert 250 <= image.shape[1] <= 360
    figure = metrics.confusion_matrix_figure(np.diag([5] * 7), DFEW_NAMES, compact=True)
    axes = figure.axes[0]
    assert min(t.get_fontsize() for t in axes.texts) >= 6.5
    assert [t.get_text() for t in axes.get_xticklabels()] == list(DFEW_NAMES)


def test_the_confusion_matrix_image_is_rgb_and_darker_on_frequent_cells():
    image = metrics.confusion_matrix_image(np.array([[9, 1], [0, 5]]), ['a', 'b'])
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # The darkest pixels are the diagonal cells (recall 90% and 100%), the colours follow
    # the row-normalised values: dark blue in the middle of the upper-left cell.
    h, w, _ = image.shape
    blues = (image[..., 2] > image[..., 0] + 60).sum()
    assert blues > 0.05 * h * w
