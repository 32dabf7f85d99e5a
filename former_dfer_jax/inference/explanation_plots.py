"""Pictures and exports of explanations: t-SNE of clip features, the TensorBoard projector
export, and heatmap strips of clips (frames, feature-map and Grad-CAM overlays, temporal
importance) from `inference.explanations.explain_clips` outputs.

Every file is written through `files.atomic_path`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from former_dfer_jax import files

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# t-SNE settings: ~2,300 clips x 512 features in well under a minute on 2 cores (docs/explain.md).
TSNE_PCA_DIMS = 50
TSNE_PERPLEXITY = 30.0
TSNE_MAX_ITER = 500


# ---- t-SNE and the projector --------------------------------------------------------------


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of [n, d] features: PCA to 50 dimensions first, 500 iterations (the
    timing is in docs/explain.md); small sets get a perplexity below their size."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    x = np.asarray(features, np.float64)
    if n < 3:
        return np.zeros((n, 2))
    dims = min(TSNE_PCA_DIMS, n, x.shape[1])
    if dims < x.shape[1]:
        x = PCA(dims, random_state=seed).fit_transform(x)
    perplexity = min(TSNE_PERPLEXITY, (n - 1) / 3)
    return TSNE(
        2,
        perplexity=perplexity,
        init='pca',
        max_iter=TSNE_MAX_ITER,
        n_jobs=-1,
        random_state=seed,
    ).fit_transform(x)


def tsne_figure(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str]
) -> Figure:
    """One scatter panel per (title -> (embedding [n, 2], labels [n])), coloured by class;
    the legend (every class of `class_names`, shown or not) right of the last panel."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(panels), 5))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = colormaps['tab10' if len(class_names) <= 10 else 'tab20']
    for ax, (title, (embedding, labels)) in zip(axes, panels.items(), strict=True):
        for c, name in enumerate(class_names):
            at = labels == c
            colour = colours(c % colours.N)
            ax.scatter(*embedding[at].T, s=9, color=colour, label=name, alpha=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def plot_tsne(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str], path: str
) -> None:
    """`tsne_figure` written to `path` (PNG)."""
    fig = tsne_figure(panels, class_names)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)


def projector_dir(run_dir: str) -> str:
    """Where TensorBoard's projector finds a run's embeddings (`tensorboard --logdir RUN`):
    the run's projector plugin assets, <run>/plugins/org_tensorflow_tensorboard_projector."""
    from tensorboard.plugins.projector import metadata

    return os.path.join(run_dir, metadata.PLUGINS_DIR, metadata.PLUGIN_ASSETS_NAME)


def write_projector(
    run_dir: str, features: np.ndarray, metadata: Mapping[str, Any], name: str
) -> str:
    """Embeddings (TSV), their metadata (TSV with a header: one column per `metadata`
    key) and projector_config.pbtxt into `projector_dir(run_dir)`; returns that folder."""
    from google.protobuf import text_format
    from tensorboard.plugins import projector
    from tensorboard.plugins.projector import metadata as projector_metadata

    out = projector_dir(run_dir)
    os.makedirs(out, exist_ok=True)
    with files.atomic_path(os.path.join(out, f'{name}.tsv')) as tmp:
        np.savetxt(tmp, features, delimiter='\t', fmt='%.6g')
    with (
        files.atomic_path(os.path.join(out, f'{name}_metadata.tsv')) as tmp,
        open(tmp, 'w', newline='') as f,
    ):
        writer = csv.writer(f, delimiter='\t', lineterminator='\n')
        writer.writerow(list(metadata))
        writer.writerows(zip(*metadata.values(), strict=True))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = name
    embedding.tensor_path = f'{name}.tsv'
    embedding.metadata_path = f'{name}_metadata.tsv'
    config_path = os.path.join(out, projector_metadata.PROJECTOR_FILENAME)
    files.write_text(config_path, text_format.MessageToString(config))
    return out


# ---- Heatmap pictures ---------------------------------------------------------------------


@dataclasses.dataclass
class ClipPicture:
    """One model's explanation of one clip, as `plot_clip` draws it."""

    title: str
    feature_heatmap: np.ndarray  # [T, H, W]
    grad_cam: np.ndarray  # [T, H, W]
    occlusion: np.ndarray  # [T]
    frame_importance: np.ndarray | None  # [T], T-Former attention rollout


def clip_picture(out: Mapping[str, Any], i: int, title: str) -> ClipPicture:
    """Clip `i` of an `explain_clips` output (arrays [B, ...]) as `plot_clip` draws it."""
    importance = out.get('frame_importance')
    return ClipPicture(
        title=title,
        feature_heatmap=np.asarray(out['feature_heatmap'][i]),
        grad_cam=np.asarray(out['grad_cam'][i]),
        occlusion=np.asarray(out['occlusion'][i]),
        frame_importance=None if importance is None else np.asarray(importance[i]),
    )


def overlay(frames: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Frames [T, H, W, 3] in [0, 1] blended with the 'jet' colours of heat [T, H, W]."""
    from matplotlib import colormaps

    # float32: heatmaps may be kept compact (float16, as `predict --explain` keeps them).
    colours = colormaps['jet'](np.clip(np.asarray(heat, np.float32), 0, 1))[..., :3]
    return (1 - alpha) * np.clip(frames, 0, 1) + alpha * colours


def _strip(frames: np.ndarray, gap: int) -> np.ndarray:
    """[T, H, W, 3] -> one [H, T * (W + gap) - gap, 3] row, white between the frames."""
    t, h, w, _ = frames.shape
    row = np.ones((h, t * (w + gap) - gap, 3))
    for j, frame in enumerate(frames):
        row[:, j * (w + gap) : j * (w + gap) + w] = frame
    return row


def plot_clip(video: np.ndarray, pictures: list[ClipPicture], path: str, heading: str) -> None:
    """Per model (top to bottom): the frames, their feature-map and Grad-CAM overlays, and
    the temporal importance under them (occlusion bars; attention rollout line)."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    t, size = video.shape[0], video.shape[1]
    gap = max(1, size // 16)
    ratios = []
    for _ in pictures:
        ratios += [3.0, 1.1, 0.7]  # the three image rows, the curve, a spacer
    fig = plt.figure(figsize=(0.62 * t + 1.4, sum(ratios) * 0.62 + 0.5))
    grid = fig.add_gridspec(len(ratios), 1, height_ratios=ratios, hspace=0.05)
    rows = ('frames', 'feature map', 'Grad-CAM')
    for p, picture in enumerate(pictures):
        image = np.concatenate(
            [
                _strip(video, gap),
                np.ones((gap, 1, 3)) * np.ones((1, t * (size + gap) - gap, 1)),
                _strip(overlay(video, picture.feature_heatmap), gap),
                np.ones((gap, t * (size + gap) - gap, 3)),
                _strip(overlay(video, picture.grad_cam), gap),
            ]
        )
        ax = fig.add_subplot(grid[3 * p])
        ax.imshow(np.clip(image, 0, 1), interpolation='nearest', aspect='auto')
        ax.set_xticks([])
        ax.set_yticks([(i + 0.5) * (size + gap) for i in range(3)], rows, fontsize=7)
        ax.set_title(picture.title, fontsize=8, loc='left')
        ax = fig.add_subplot(grid[3 * p + 1])
        x = np.arange(t)
        ax.bar(x, picture.occlusion, color='tab:gray', label='occlusion: drop in p')
        ax.axhline(0, color='black', lw=0.5)
        ax.set_xlim(-0.5, t - 0.5)
        ax.set_xticks(x)
        ax.tick_params(labelsize=6)
        ax.set_ylabel('importance', fontsize=7)
        ax.legend(loc='upper left', fontsize=6, frameon=False)
        if picture.frame_importance is not None:
            twin = ax.twinx()
            twin.plot(x, picture.frame_importance, color='tab:red', marker='.', label='attention')
            twin.set_ylim(0, max(1e-6, float(np.max(picture.frame_importance))) * 1.15)
            twin.tick_params(labelsize=6, colors='tab:red')
            twin.legend(loc='upper right', fontsize=6, frameon=False)
    fig.suptitle(heading, fontsize=9)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches='tight')
    plt.close(fig)
