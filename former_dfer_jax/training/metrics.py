"""Classification metrics of the DFER literature, from a confusion matrix.

WAR (weighted average recall) is plain accuracy; UAR (unweighted average recall) is the
mean of the per-class recalls, so rare classes (disgust, fear) count as much as common
ones. Everything derives from the confusion matrix, which is additive: the pooled
metrics over several folds are those of the summed matrices (the paper's protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


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


def confusion_matrix_image(
    matrix: np.ndarray, class_names: Sequence[str], cell: int = 64
) -> np.ndarray:
    """The row-normalised confusion matrix drawn as an RGB uint8 image `[H, W, 3]`.

    Each cell shows the recall (row-normalised percentage) and the count; rows are true
    classes, columns predictions. Drawn with PIL so no plotting library is needed.
    """
    n = len(class_names)
    font = ImageFont.load_default()
    label_w, top = 110, 40
    image = Image.new('RGB', (label_w + n * cell + 10, top + n * cell + 30), 'white')
    draw = ImageDraw.Draw(image)
    with np.errstate(invalid='ignore', divide='ignore'):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    for i in range(n):
        draw.text((4, top + i * cell + cell // 2 - 6), class_names[i], fill='black', font=font)
        draw.text(
            (label_w + i * cell + 4, top - 28 + (i % 2) * 12),
            class_names[i][:10],
            fill='black',
            font=font,
        )
        for j in range(n):
            shade = int(255 * (1 - normalised[i, j]))
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle(
                [x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline='gray'
            )
            ink = 'white' if normalised[i, j] > 0.5 else 'black'
            draw.text(
                (x0 + 6, y0 + cell // 2 - 12), f'{100 * normalised[i, j]:.1f}%', fill=ink, font=font
            )
            draw.text((x0 + 6, y0 + cell // 2 + 2), f'n={matrix[i, j]}', fill=ink, font=font)
    draw.text(
        (label_w, top + n * cell + 8),
        'rows: true class, columns: predicted',
        fill='black',
        font=font,
    )
    return np.asarray(image)
