"""Classification metrics of the DFER literature, from a confusion matrix.

WAR (weighted average recall) is plain accuracy; UAR (unweighted average recall) is the
mean of the per-class recalls, so rare classes (disgust, fear) count as much as common
ones. Everything derives from the confusion matrix, which is additive: the pooled
metrics over several folds are those of the summed matrices (the paper's protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from former_dfer_jax import files

if TYPE_CHECKING:
    import matplotlib.figure


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """`[true, predicted]` counts (int64) of the clips where `mask` is True."""
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    if mask is not None:
        keep = np.asarray(mask).reshape(-1).astype(bool)
        labels, predictions = labels[keep], predictions[keep]
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for a class with no clips)."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.diag(matrix) / support


def war(matrix: np.ndarray) -> float:
    """Weighted average recall = accuracy over all clips."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float('nan')


def uar(matrix: np.ndarray) -> float:
    """Unweighted average recall: mean recall over the classes that have clips."""
    recalls = per_class_recall(matrix)
    present = ~np.isnan(recalls)
    return float(recalls[present].mean()) if present.any() else float('nan')


def summarize(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """UAR, WAR, per-class recall and the matrix itself, JSON-ready (fractions in [0, 1])."""
    recalls = per_class_recall(matrix)
    return {
        'uar': uar(matrix),
        'war': war(matrix),
        'per_class_recall': {
            name: (None if np.isnan(r) else float(r))
            for name, r in zip(class_names, recalls, strict=True)
        },
        'num_clips': int(matrix.sum()),
        'confusion_matrix': matrix.astype(int).tolist(),
    }


def format_table(rows: dict[str, dict], class_names: Sequence[str]) -> str:
    """A markdown table, one row per entry of `rows` (name -> `summarize` output), in the
    layout of the paper's Table 4: per-class accuracy, UAR, WAR, in percent."""
    header = ['', *class_names, 'UAR', 'WAR']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for name, summary in rows.items():
        cells = [name]
        for cls in class_names:
            recall = summary['per_class_recall'].get(cls)
            cells.append('-' if recall is None else f'{100 * recall:.2f}')
        cells += [f'{100 * summary["uar"]:.2f}', f'{100 * summary["war"]:.2f}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def confusion_matrix_figure(
    matrix: np.ndarray, class_names: Sequence[str], title: str = '', *, compact: bool = False
) -> matplotlib.figure.Figure:
    """The confusion matrix as people read it: rows true classes, columns predictions,
    colours row-normalised (recall) with a colour bar, each cell its percentage of the row
    and its count, full class names. `compact`: drawn small (about 120 + 32 px a class at
    100 dpi) with fonts that stay readable where TensorBoard shows it without scaling."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    n = len(class_names)
    with np.errstate(invalid='ignore', divide='ignore'):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    if compact:
        side, size, bar_label = 0.27 * n + 1.0, 6.5, 'recall (share of the row)'
    else:
        side = max(6.0, 0.75 * n + 2.5)
        size, bar_label = 11 if n <= 8 else 8, 'share of the true class (recall on the diagonal)'
    figure = Figure(figsize=(side + side / 5, side), layout='constrained')
    axes = figure.add_subplot()
    shown = axes.imshow(normalised, cmap='Blues', vmin=0.0, vmax=1.0)
    colour_bar = figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.02)
    colour_bar.set_label(bar_label, fontsize=size)
    colour_bar.ax.tick_params(labelsize=size)
    for i in range(n):
        for j in range(n):
            axes.text(
                j,
                i,
                f'{100 * normalised[i, j]:.0f}%\n{matrix[i, j]}',
                ha='center',
                va='center',
                fontsize=size,
                color='white' if normalised[i, j] > 0.5 else 'black',
            )
    axes.set_xticks(range(n), class_names, rotation=40, ha='right', fontsize=size + 1)
    axes.set_yticks(range(n), class_names, fontsize=size + 1)
    axes.set_xlabel('predicted class', fontsize=size + 1)
    axes.set_ylabel('true class', fontsize=size + 1)
    if title:
        axes.set_title(title, fontsize=size + 2)
    return figure


def figure_image(figure: matplotlib.figure.Figure, dpi: int = 100) -> np.ndarray:
    """`figure` rendered as an RGB uint8 image `[H, W, 3]` (e.g. for TensorBoard)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure: matplotlib.figure.Figure, path: str, dpi: int = 110) -> None:
    """Saves `figure` as a PNG at `path` atomically."""
    with files.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format='png')


def confusion_matrix_image(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The compact `confusion_matrix_figure` as an RGB uint8 image `[H, W, 3]` for
    TensorBoard: about 390 px wide for 7 classes, within the width of its image cards, so
    it is shown at its own size and every number stays readable."""
    return figure_image(confusion_matrix_figure(matrix, class_names, compact=True))
