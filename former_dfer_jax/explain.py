"""Explanations of a trained model: where it looks in each frame, which frames it relies on,
and how its clip vectors group.

    python -m former_dfer_jax.explain --model=runs/synthetic [--compare=runs/synthetic_gru] \\
        --split=test --output=explain/synthetic [--clips=3] [--stage=sformer]

writes into --output `features.npz` (features, labels, predictions, probabilities,
clip_ids: one row per clip of the split), `tsne.png` (one panel per model),
`heatmaps/<class>/<clip>.png` (the --clips most confident and most confused clips of each
class: frames, feature-map and Grad-CAM overlays, temporal importance; the --compare
model's rows above) with `heatmaps/index.csv`, and a TensorBoard projector export into
each run (<run>/plugins/org_tensorflow_tensorboard_projector/: `tensorboard --logdir RUN`,
Projector tab). On the synthetic dataset, `--ground_truth=conv3,sformer` also measures the
heatmaps' mass on the generator's face / feature / occluder masks (ground_truth.json).

The functions below are pure and jit-able (wrap them with `bind`); `model` is an eval-mode
`FormerDFER` (`inference.load_model` returns one). Stages ('conv4' = layer3's output, the
paper's conv4 map; 'conv5' = layer4's; 'sformer' = the S-Former's output map; also 'conv2',
'conv3'):

* `feature_heatmaps`: mean |activation| over channels per frame (paper Fig. 3);
* `grad_cam`: Grad-CAM of a class logit (default: the predicted class) per frame;
* `attention_rollout` / `temporal_attention`: T-Former attention rollout to the frames;
* `occlusion_scores`: drop in class probability when a frame is replaced by its neighbour
  (the only temporal importance of the GRU / LSTM baselines);
* `clip_features` / `split_features`: the vector the classifier reads;
* `synthetic_heatmap_shares`: heatmap mass on the synthetic ground truth.

Heatmaps are [B, T, H, W] at the frame size, min-max normalised to [0, 1] per clip.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import heapq
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from former_dfer_jax.errors import UserError
from former_dfer_jax.models.former_dfer import FormerDFER, ModelSpec
from former_dfer_jax.models.spatial import S_FORMER_POINT

# Stage name -> the model's tap point (see `models.spatial.CSFormer`).
STAGES = {
    'conv2': 'layer1',
    'conv3': 'layer2',
    'conv4': 'layer3',
    'conv5': 'layer4',
    'sformer': S_FORMER_POINT,
}
# t-SNE settings: ~2,300 clips x 512 features in well under a minute on 2 cores (README).
TSNE_PCA_DIMS = 50
TSNE_PERPLEXITY = 30.0
TSNE_MAX_ITER = 500
TARGETS = ('predicted', 'label')


class ExplainError(UserError):
    """An explanation that cannot be made as asked (a stage the model lacks, runs that
    were not trained on the same data)."""


# ---- Stages and maps ----------------------------------------------------------------------


def default_stage(spec: ModelSpec) -> str:
    """'sformer' where the model has an S-Former, else 'conv5' (the last ResNet map)."""
    return 'sformer' if spec.spatial.enabled else 'conv5'


def check_stage(spec: ModelSpec, stage: str) -> str:
    """The tap point of `stage`; an ExplainError where the model has no such map."""
    if stage not in STAGES:
        raise ExplainError(f'stage {stage!r}: expected one of {", ".join(STAGES)}')
    if stage == 'sformer' and not spec.spatial.enabled:
        raise ExplainError(
            "stage 'sformer': this model has no S-Former (spatial.enabled=False); "
            'use conv4 or conv5'
        )
    return STAGES[stage]


def normalise_per_clip(maps: jax.Array) -> jax.Array:
    """[B, T, H, W] -> min-max scaled to [0, 1] over each clip (a flat clip -> zeros)."""
    lo = jnp.min(maps, axis=(1, 2, 3), keepdims=True)
    hi = jnp.max(maps, axis=(1, 2, 3), keepdims=True)
    span = hi - lo
    return jnp.where(span > 0, (maps - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def to_frames(maps: jax.Array, frame_size: int) -> jax.Array:
    """Per-frame maps [B, T, h, w] -> bilinearly upsampled [B, T, S, S], normalised per clip."""
    b, t = maps.shape[:2]
    up = jax.image.resize(maps.astype(jnp.float32), (b, t, frame_size, frame_size), 'bilinear')
    return normalise_per_clip(up)


def _forward(
    model: FormerDFER, clips: jax.Array, point: str | None, delta: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """logits, and the taps' values: the map at `point` (with `delta` added: its gradient
    is the gradient w.r.t. the map), 'frame_features' and 'clip_features'."""
    seen = {}

    def tap(name: str, value: jax.Array) -> jax.Array:
        if name == point and delta is not None:
            value = value + delta.astype(value.dtype)
        if name in (point, 'frame_features', 'clip_features'):
            seen['map' if name == point else name] = value
        return value

    return model(clips, tap), seen


def _per_clip(values: jax.Array, batch: int) -> jax.Array:
    """[B * T, ...] -> [B, T, ...]."""
    return values.reshape(batch, -1, *values.shape[1:])


# ---- Spatial explanations -----------------------------------------------------------------


def feature_heatmaps(model: FormerDFER, clips: jax.Array, *, stage: str) -> jax.Array:
    """Mean |activation| over the channels of `stage`'s map: [B, T, H, W] in [0, 1]."""
    _, seen = _forward(model, clips, check_stage(model.spec, stage))
    amount = jnp.mean(jnp.abs(seen['map'].astype(jnp.float32)), axis=-1)
    return to_frames(_per_clip(amount, clips.shape[0]), clips.shape[2])


def grad_cam(
    model: FormerDFER, clips: jax.Array, class_index: jax.Array | None = None, *, stage: str
) -> dict[str, jax.Array]:
    """Grad-CAM on `stage`'s map for `class_index` [B] (default: the predicted class).

    Per frame: channel weights = the spatially averaged gradient of the class logit w.r.t.
    the map; map = ReLU(sum_c weight_c * activation_c). Returns 'grad_cam' [B, T, H, W] in
    [0, 1], 'feature_heatmap' (as `feature_heatmaps`), 'logits', 'class_index' and
    'features' (the classifier's input), all from one forward and one backward pass.
    """
    b = clips.shape[0]
    point = check_stage(model.spec, stage)
    # The map's shape and dtype without running the model (nothing is compiled for it).
    shaped = jax.eval_shape(lambda c: _forward(model, c, point)[1]['map'], clips)
    delta = jnp.zeros(shaped.shape, shaped.dtype)
    logits, pullback, seen = jax.vjp(
        lambda d: _forward(model, clips, point, d), delta, has_aux=True
    )
    if class_index is None:
        class_index = jnp.argmax(logits, axis=-1)
    # Clips are independent (BatchNorm uses its running averages), so one pullback of the
    # chosen logits gives every clip's own gradient.
    (grads,) = pullback(jax.nn.one_hot(class_index, logits.shape[-1], dtype=logits.dtype))
    fmap = seen['map'].astype(jnp.float32)
    weights = jnp.mean(grads.astype(jnp.float32), axis=(1, 2))  # [B * T, c]
    cam = jax.nn.relu(jnp.einsum('nhwc,nc->nhw', fmap, weights))
    size = clips.shape[2]
    return {
        'grad_cam': to_frames(_per_clip(cam, b), size),
        'feature_heatmap': to_frames(_per_clip(jnp.mean(jnp.abs(fmap), axis=-1), b), size),
        'logits': logits,
        'class_index': class_index,
        'features': seen['clip_features'].astype(jnp.float32),
    }


# ---- Temporal explanations ----------------------------------------------------------------


def has_attention(spec: ModelSpec) -> bool:
    """Whether the temporal model is a T-Former (GRU / LSTM: occlusion only)."""
    return spec.temporal.kind == 'transformer'


def attention_rollout(attention: jax.Array) -> jax.Array:
    """Attention rollout (Abnar & Zuidema 2020) of per-layer weights [L, B, heads, N, N]:
    heads averaged, the identity added for the residual path, rows renormalised, layers
    multiplied from the first. Returns [B, N, N], rows summing to 1."""
    n = attention.shape[-1]
    a = jnp.mean(attention.astype(jnp.float32), axis=2) + jnp.eye(n)
    a = a / jnp.sum(a, axis=-1, keepdims=True)
    rollout = a[0]
    for layer in a[1:]:
        rollout = jnp.einsum('bij,bjk->bik', layer, rollout)
    return rollout


def temporal_attention(model: FormerDFER, clips: jax.Array) -> dict[str, jax.Array]:
    """'rollout' [B, N, N] of the T-Former and 'frame_importance' [B, T] (summing to 1):
    the class token's row over the frames, renormalised, or with mean pooling the mean of
    the frame tokens' rows (what the pooled output reads)."""
    if not has_attention(model.spec):
        raise ExplainError(
            f'temporal.kind={model.spec.temporal.kind!r} has no attention: use occlusion_scores'
        )
    _, seen = _forward(model, clips, None)
    rollout = attention_rollout(model.temporal.attention_maps(seen['frame_features']))
    if model.temporal.cls_token is not None:
        row = rollout[:, 0, 1:]
        importance = row / jnp.sum(row, axis=-1, keepdims=True)
    else:
        importance = jnp.mean(rollout, axis=1)
    return {'rollout': rollout, 'frame_importance': importance}


def neighbour_frames(num_frames: int) -> np.ndarray:
    """The frame that replaces frame t when it is occluded: t - 1, and 1 for frame 0."""
    return np.where(np.arange(num_frames) == 0, min(1, num_frames - 1), np.arange(num_frames) - 1)


def occlusion_scores(
    model: FormerDFER, clips: jax.Array, class_index: jax.Array | None = None
) -> jax.Array:
    """[B, T]: p(class | clip) - p(class | clip with frame t replaced by its neighbour)
    (`neighbour_frames`), for `class_index` [B] (default: the predicted class)."""
    t = clips.shape[1]
    probabilities = jax.nn.softmax(model(clips), axis=-1)
    if class_index is None:
        class_index = jnp.argmax(probabilities, axis=-1)
    base = jnp.take_along_axis(probabilities, class_index[:, None], axis=1)[:, 0]
    source = jnp.asarray(neighbour_frames(t))

    def occluded(frame: jax.Array) -> jax.Array:
        copy = jnp.where(
            (jnp.arange(t) == frame)[None, :, None, None, None],
            clips[:, source[frame]][:, None],
            clips,
        )
        p = jax.nn.softmax(model(copy), axis=-1)
        return jnp.take_along_axis(p, class_index[:, None], axis=1)[:, 0]

    # One frame at a time (lax.map): memory stays that of one batch.
    return base[:, None] - jax.lax.map(occluded, jnp.arange(t)).T


# ---- Features -----------------------------------------------------------------------------


def clip_features(model: FormerDFER, clips: jax.Array) -> dict[str, jax.Array]:
    """'features' [B, D] (the classifier's input: the class token's output, the mean of the
    frame tokens, or the last RNN state) and 'logits' [B, C]."""
    logits, seen = _forward(model, clips, None)
    return {'features': seen['clip_features'].astype(jnp.float32), 'logits': logits}


def explain_clips(
    model: FormerDFER, clips: jax.Array, class_index: jax.Array | None = None, *, stage: str
) -> dict[str, jax.Array]:
    """Everything the heatmap pictures show: `grad_cam`'s outputs, 'occlusion' [B, T] and,
    for T-Former models, 'rollout' and 'frame_importance' (`temporal_attention`)."""
    out = grad_cam(model, clips, class_index, stage=stage)
    out['probabilities'] = jax.nn.softmax(out['logits'], axis=-1)
    out['occlusion'] = occlusion_scores(model, clips, out['class_index'])
    if has_attention(model.spec):
        out.update(temporal_attention(model, clips))
    return out


def bind(model: nnx.Module, fn: Callable[..., Any], **static: Any) -> Callable[..., Any]:
    """`fn(model, *arrays, **static)` jitted with the model's state as an argument (so
    the weights are not baked into the program as constants)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, *arrays):
        return fn(nnx.merge(graphdef, state), *arrays, **static)

    return functools.partial(run, state)


def split_batches(config: ml_collections.ConfigDict, split: str) -> Iterator[dict[str, np.ndarray]]:
    """The eval pipeline's batches of `split` (every clip once, padding mask=False)."""
    from former_dfer_jax import data  # TensorFlow: only where data is read

    if split == 'train':
        raise ExplainError(
            "split 'train': its pipeline augments and drops clips; use 'test' or 'validation'"
        )
    try:
        yield from data.load(config, split, process_index=0, process_count=1)
    except ValueError as e:
        raise ExplainError(f'split {split!r}: {e}') from e


def _num_batches(config: ml_collections.ConfigDict, split: str) -> int | None:
    from former_dfer_jax import data

    return data.info(config).num_eval_batches.get(split)


def split_features(
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    split: str = 'test',
    *,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """features, logits, labels, predictions and clip_ids of every clip of `split` once."""
    fn = bind(model, clip_features)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ('features', 'logits', 'labels', 'ids')}
    batches = split_batches(config, split)
    for batch in _progress(batches, progress, f'Features of {split}', _num_batches(config, split)):
        out = jax.device_get(fn(batch['video']))
        keep = batch['mask']
        parts['features'].append(np.asarray(out['features'])[keep])
        parts['logits'].append(np.asarray(out['logits'])[keep])
        parts['labels'].append(batch['label'][keep])
        parts['ids'].append(batch['clip_id'][keep])
    logits = np.concatenate(parts['logits'])
    return {
        'features': np.concatenate(parts['features']),
        'logits': logits,
        'labels': np.concatenate(parts['labels']).astype(np.int32),
        'predictions': np.argmax(logits, axis=-1).astype(np.int32),
        'clip_ids': np.array([_text(c) for c in np.concatenate(parts['ids'])]),
    }


def _text(clip_id: bytes | str) -> str:
    return clip_id.decode() if isinstance(clip_id, bytes) else str(clip_id)


def _progress(items, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return items
    import tqdm  # only the CLI shows bars

    return tqdm.tqdm(items, desc=desc, total=total, unit='batch')


# ---- The synthetic ground truth -----------------------------------------------------------


def mass_share(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each frame's heatmap mass on its mask, [..., H, W] -> [...] (NaN where a
    heatmap is all zero)."""
    total = heatmaps.sum(axis=(-1, -2))
    on = (heatmaps * masks).sum(axis=(-1, -2))
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(total > 0, on / total, np.nan)


GROUND_TRUTH = ('face', 'features', 'occluder')


def synthetic_heatmap_shares(
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    stages: list[str],
    split: str = 'test',
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Where the heatmaps of a model trained on the synthetic dataset fall, against the
    generator's ground truth (`data.synthetic.clip_masks` of each clip's sampled frames).

    Per stage and map ('feature_map', 'grad_cam') and region: the share of a clip's
    heatmap mass on the region, averaged over the clips, with its standard error
    ('<region>_se'). 'face' (the face outline) and 'features' (the moving features) use
    all the clip's frames; 'occluder' only its frames that show one, and only the clips
    that have such frames ('occluded_clips'). 'area' holds the same for a flat heatmap
    (the regions' own area): what a map blind to the image scores. Heatmaps are the
    displayed ones (min-max normalised per clip).
    """
    from former_dfer_jax.data import sampling, synthetic

    if config.data.name != 'synthetic':
        raise ExplainError(f"data.name={config.data.name!r}: ground truth needs 'synthetic'")
    params = dict(config.data.synthetic)
    size = int(config.data.image_size)
    u, v = int(config.data.num_segments), int(config.data.segment_length)
    fns = {stage: bind(model, grad_cam, stage=stage) for stage in stages}
    maps = {'feature_map': 'feature_heatmap', 'grad_cam': 'grad_cam'}
    shares: dict[tuple[str, ...], list[float]] = {}

    def add(key: tuple[str, ...], heat: np.ndarray, masks: dict, occluded: np.ndarray):
        for region in GROUND_TRUTH:
            frames = occluded if region == 'occluder' else np.ones(len(heat), bool)
            if frames.any():
                on = float((heat[frames] * masks[region][frames]).sum())
                total = float(heat[frames].sum())
                shares.setdefault((*key, region), []).append(on / total if total else np.nan)

    total = _num_batches(config, split)
    for batch in _progress(split_batches(config, split), progress, 'Ground truth', total):
        outs = {stage: jax.device_get(fn(batch['video'])) for stage, fn in fns.items()}
        for i in np.flatnonzero(batch['mask']):
            clip_id = int(_text(batch['clip_id'][i]))
            length = len(synthetic.dataset_clip(params, clip_id).expression)
            frames = sampling.sample_frame_indices(length, u, v, train=False).tolist()
            masks = synthetic.clip_masks(params, clip_id, frames)
            if masks['face'].shape[-1] != size:
                masks = {
                    k: np.asarray(jax.image.resize(m, (len(m), size, size), 'bilinear'))
                    for k, m in masks.items()
                }
            occluded = masks['occluder'].max(axis=(1, 2)) > 0
            add(('area',), np.ones_like(masks['face']), masks, occluded)
            for stage, out in outs.items():
                for kind, key in maps.items():
                    add((stage, kind), np.asarray(out[key][i], np.float64), masks, occluded)

    def summary(*key: str) -> dict[str, float | None]:
        out = {}
        for region in GROUND_TRUTH:
            values = np.asarray(shares.get((*key, region), []), np.float64)
            values = values[np.isfinite(values)]
            n = len(values)
            out[region] = float(values.mean()) if n else None
            out[f'{region}_se'] = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else None
        return out

    return {
        'clips': len(shares.get(('area', 'face'), [])),
        'occluded_clips': len(shares.get(('area', 'occluder'), [])),
        'area': summary('area'),
        **{stage: {kind: summary(stage, kind) for kind in maps} for stage in stages},
    }


# ---- t-SNE and the projector --------------------------------------------------------------


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of [n, d] features: PCA to 50 dimensions first, 500 iterations (the
    timing is in the README); small sets get a perplexity below their size."""
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


def plot_tsne(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]], class_names: tuple[str, ...], path: str
) -> None:
    """One scatter panel per (title -> (embedding [n, 2], labels [n])), coloured by class."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    colours = plt.get_cmap('tab10')
    for ax, (title, (embedding, labels)) in zip(axes[0], panels.items(), strict=True):
        for c, name in enumerate(class_names):
            at = labels == c
            ax.scatter(*embedding[at].T, s=9, color=colours(c), label=name, alpha=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def projector_dir(run_dir: str) -> str:
    """Where TensorBoard's projector finds a run's embeddings (`tensorboard --logdir RUN`):
    the run's projector plugin assets, <run>/plugins/org_tensorflow_tensorboard_projector."""
    from tensorboard.plugins.projector import metadata

    return os.path.join(run_dir, metadata.PLUGINS_DIR, metadata.PLUGIN_ASSETS_NAME)


def write_projector(
    run_dir: str, features: np.ndarray, metadata: Mapping[str, np.ndarray], name: str
) -> str:
    """Embeddings (TSV), their metadata (TSV with a header) and projector_config.pbtxt."""
    from tensorboard.plugins import projector

    out = projector_dir(run_dir)
    os.makedirs(out, exist_ok=True)
    np.savetxt(os.path.join(out, f'{name}.tsv'), features, delimiter='\t', fmt='%.6g')
    with open(os.path.join(out, f'{name}_metadata.tsv'), 'w', newline='') as f:
        writer = csv.writer(f, delimiter='\t', lineterminator='\n')
        writer.writerow(list(metadata))
        writer.writerows(zip(*metadata.values(), strict=True))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = name
    embedding.tensor_path = f'{name}.tsv'
    embedding.metadata_path = f'{name}_metadata.tsv'
    projector.visualize_embeddings(out, config)
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
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)


# ---- The command line ---------------------------------------------------------------------

# Data settings two runs must share to be explained on the same clips.
_SAME_DATA = (
    'name',
    'root',
    'fold',
    'annotation_dir',
    'annotation_prefix',
    'stored_frame_size',
    'image_size',
    'num_segments',
    'segment_length',
    'val_fraction',
    'synthetic',
)


@dataclasses.dataclass
class _Run:
    """A loaded run and its jitted functions."""

    name: str
    path: str
    model: nnx.Module
    config: ml_collections.ConfigDict
    stage: str
    features: Callable[..., Any]
    explain: Callable[..., Any]


def _load_run(path: str, which: str, stage: str) -> _Run:
    from former_dfer_jax.training import checkpointing

    model, stored = checkpointing.restore_model(path, which)
    model.eval()
    stage = stage or default_stage(model.spec)
    check_stage(model.spec, stage)
    return _Run(
        name=os.path.basename(os.path.normpath(stored.run_dir)),
        path=stored.run_dir,
        model=model,
        config=stored.config,
        stage=stage,
        features=bind(model, clip_features),
        explain=bind(model, explain_clips, stage=stage),
    )


def _check_same_data(a: _Run, b: _Run) -> None:
    da, db = a.config.data, b.config.data
    keys = [f'data.{k}' for k in _SAME_DATA if da.get(k) != db.get(k)]
    if float(da.val_fraction) > 0 and a.config.seed != b.config.seed:
        keys.append('seed (it draws the validation split)')
    if keys:
        raise ExplainError(
            f'--compare={b.path}: its data differ from those of {a.path} in {", ".join(keys)}; '
            'compare runs trained on the same clips'
        )


class Extremes:
    """Per class, the n clips of highest ('confident') and of lowest ('confused')
    probability of their true class, with their videos: only these stay in memory."""

    def __init__(self, n: int):
        self.n = n
        self._heaps: dict[tuple[int, str], list[tuple[float, int]]] = {}
        self.videos: dict[int, np.ndarray] = {}

    def offer(self, row: int, label: int, p_true: float, video: np.ndarray) -> None:
        if self.n < 1:
            return
        kept = False
        for kind, key in (('confident', p_true), ('confused', -p_true)):
            heap = self._heaps.setdefault((label, kind), [])
            if len(heap) < self.n:
                heapq.heappush(heap, (key, row))
                kept = True
            elif key > heap[0][0]:
                _, dropped = heapq.heapreplace(heap, (key, row))
                kept = True
                if not any(r == dropped for h in self._heaps.values() for _, r in h):
                    self.videos.pop(dropped, None)
        if kept:
            self.videos[row] = video

    def selected(self) -> list[tuple[int, int, str]]:
        """(row, label, kind) by row; a clip in both lists (a small class) is 'confident'."""
        out: dict[int, tuple[int, str]] = {}
        for kind in ('confident', 'confused'):
            for (label, k), heap in self._heaps.items():
                for _, row in heap:
                    if k == kind:
                        out.setdefault(row, (label, kind))
        return [(row, *out[row]) for row in sorted(out)]


def _split_pass(runs: list[_Run], split: str, extremes: Extremes) -> dict[str, Any]:
    """Features and probabilities of every clip of `split` once, per run (the first run's
    data config); the extremes of the last run (the one explained) collected on the way."""
    parts = {run.name: {'features': [], 'logits': []} for run in runs}
    labels, clip_ids, row = [], [], 0
    total = _num_batches(runs[0].config, split)
    batches = split_batches(runs[0].config, split)
    for batch in _progress(batches, True, f'Features of {split}', total=total):
        keep = batch['mask']
        for run in runs:
            out = jax.device_get(run.features(batch['video']))
            parts[run.name]['features'].append(np.asarray(out['features'])[keep])
            parts[run.name]['logits'].append(np.asarray(out['logits'])[keep])
        probabilities = _softmax(parts[runs[-1].name]['logits'][-1])
        videos, labels_ = batch['video'][keep], batch['label'][keep]
        for video, label, p in zip(videos, labels_, probabilities, strict=True):
            extremes.offer(row, int(label), float(p[label]), video)
            row += 1
        labels.append(batch['label'][keep])
        clip_ids.extend(_text(c) for c in batch['clip_id'][keep])
    per_run = {}
    for run in runs:
        logits = np.concatenate(parts[run.name]['logits'])
        per_run[run.name] = {
            'features': np.concatenate(parts[run.name]['features']),
            'probabilities': _softmax(logits),
            'predictions': np.argmax(logits, axis=-1).astype(np.int32),
        }
    return {
        'runs': per_run,
        'labels': np.concatenate(labels).astype(np.int32),
        'clip_ids': np.array(clip_ids),
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _write_features(path: str, runs: list[_Run], split: dict[str, Any]) -> None:
    ours = split['runs'][runs[-1].name]
    arrays = {
        'features': ours['features'],
        'labels': split['labels'],
        'predictions': ours['predictions'],
        'probabilities': ours['probabilities'],
        'clip_ids': split['clip_ids'],
    }
    if len(runs) > 1:
        theirs = split['runs'][runs[0].name]
        arrays.update({f'compare_{k}': v for k, v in theirs.items()})
    np.savez(path, **arrays)


def _write_tsne(path: str, runs: list[_Run], split: dict[str, Any], name: str, seed: int) -> None:
    from former_dfer_jax.data import CLASS_NAMES

    labels = split['labels']
    panels = {}
    for run in runs:
        r = split['runs'][run.name]
        accuracy = 100 * float(np.mean(r['predictions'] == labels))
        title = f'{run.name}: {name}, {len(labels)} clips, accuracy {accuracy:.1f}%'
        panels[title] = (tsne(r['features'], seed), labels)
    plot_tsne(panels, tuple(CLASS_NAMES), path)


def _write_projectors(runs: list[_Run], split: dict[str, Any], name: str) -> None:
    from former_dfer_jax.data import CLASS_NAMES

    for run in runs:
        r = split['runs'][run.name]
        metadata = {
            'label': [CLASS_NAMES[c] for c in split['labels']],
            'prediction': [CLASS_NAMES[c] for c in r['predictions']],
            'clip_id': list(split['clip_ids']),
        }
        write_projector(run.path, r['features'], metadata, name=f'features_{name}')


def _write_heatmaps(
    directory: str,
    runs: list[_Run],
    split: dict[str, Any],
    extremes: Extremes,
    *,
    batch_size: int,
    target: str,
) -> int:
    """The pictures of the selected clips and heatmaps/index.csv; returns their number."""
    from former_dfer_jax.data import CLASS_NAMES

    selected = extremes.selected()
    if not selected:
        return 0
    batch_size = max(1, min(batch_size, len(selected)))
    chunks = [selected[i : i + batch_size] for i in range(0, len(selected), batch_size)]
    ours = split['runs'][runs[-1].name]
    index = []
    for chunk in _progress(chunks, True, 'Heatmaps'):
        rows = [row for row, _, _ in chunk]
        pad = batch_size - len(rows)  # a fixed batch: compiled once
        video = np.stack([extremes.videos[r] for r in rows] + [extremes.videos[rows[0]]] * pad)
        labels = jnp.asarray(list(split['labels'][rows]) + [0] * pad, jnp.int32)
        outs = {
            run.name: jax.device_get(
                run.explain(video, labels) if target == 'label' else run.explain(video)
            )
            for run in runs
        }
        for i, (row, label, kind) in enumerate(chunk):
            pictures = []
            for run in runs:
                e, r = outs[run.name], split['runs'][run.name]
                title = (
                    f'{run.name} [{run.stage}]: predicted '
                    f'{CLASS_NAMES[r["predictions"][row]]}, '
                    f'p({CLASS_NAMES[label]}) = {r["probabilities"][row, label]:.2f}; '
                    f'maps of {CLASS_NAMES[int(e["class_index"][i])]}'
                )
                pictures.append(clip_picture(e, i, title))
            clip, p_true = split['clip_ids'][row], float(ours['probabilities'][row, label])
            folder = os.path.join(directory, CLASS_NAMES[label])
            os.makedirs(folder, exist_ok=True)
            which = 'most confident' if kind == 'confident' else 'most confused'
            heading = f'clip {clip} ({CLASS_NAMES[label]}): {which}, p = {p_true:.2f}'
            plot_clip(video[i], pictures, os.path.join(folder, f'{clip}.png'), heading)
            predicted = CLASS_NAMES[ours['predictions'][row]]
            index.append([CLASS_NAMES[label], clip, kind, f'{p_true:.4f}', predicted])
    with open(os.path.join(directory, 'index.csv'), 'w', newline='') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(['class', 'clip_id', 'kind', 'p_true', 'predicted'])
        writer.writerows(sorted(index))
    return len(index)


def _write_ground_truth(path: str, runs: list[_Run], split: str, stages: list[str]) -> str:
    """`synthetic_heatmap_shares` of every run (the stages it has) as JSON; a table."""
    results = {}
    header = '| run | stage | map | on the face | on the features | on the occluder |'
    lines = [header, '|---|---|---|---|---|---|']

    def row(name: str, stage: str, kind: str, r: dict) -> str:
        cells = [
            '-' if r[g] is None else f'{100 * r[g]:.1f} ± {100 * (r[g + "_se"] or 0):.1f}'
            for g in GROUND_TRUTH
        ]
        return '| ' + ' | '.join([name, stage, kind, *cells]) + ' |'

    for run in runs:
        own = [s for s in stages if s != 'sformer' or run.model.spec.spatial.enabled]
        results[run.name] = synthetic_heatmap_shares(
            run.model, run.config, own, split, progress=True
        )
        for stage in own:
            for kind, r in results[run.name][stage].items():
                lines.append(row(run.name, stage, kind, r))
    first = next(iter(results.values()))
    lines.append(row('flat map (region area)', '', '', first['area']))
    lines.append(f'({first["clips"]} clips, {first["occluded_clips"]} with an occluder)')
    with open(path, 'w') as f:
        json.dump(results, f, indent=1)
    return '\n'.join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    FLAGS = flags.FLAGS
    cli.setup()
    started = time.perf_counter()
    runs = [_load_run(FLAGS.model, FLAGS.checkpoint, FLAGS.stage)]
    if FLAGS.compare:
        baseline = _load_run(FLAGS.compare, FLAGS.checkpoint, FLAGS.compare_stage)
        if baseline.name == runs[0].name:
            baseline.name += ' (compare)'
        _check_same_data(runs[0], baseline)
        runs.insert(0, baseline)  # drawn above the explained model
    os.makedirs(FLAGS.output, exist_ok=True)

    extremes = Extremes(FLAGS.clips)
    split = _split_pass(runs, FLAGS.split, extremes)
    _write_features(os.path.join(FLAGS.output, 'features.npz'), runs, split)
    tsne_started = time.perf_counter()
    _write_tsne(os.path.join(FLAGS.output, 'tsne.png'), runs, split, FLAGS.split, FLAGS.seed)
    tsne_seconds = time.perf_counter() - tsne_started
    _write_projectors(runs, split, FLAGS.split)
    pictures = _write_heatmaps(
        os.path.join(FLAGS.output, 'heatmaps'),
        runs,
        split,
        extremes,
        batch_size=FLAGS.batch_size,
        target=FLAGS.target,
    )
    if FLAGS.ground_truth:
        for stage in FLAGS.ground_truth:
            if stage not in STAGES:
                raise ExplainError(f'--ground_truth: stage {stage!r}: expected {", ".join(STAGES)}')
        table = _write_ground_truth(
            os.path.join(FLAGS.output, 'ground_truth.json'), runs, FLAGS.split, FLAGS.ground_truth
        )
        print(f'Heatmap mass on the ground truth, percent ({FLAGS.split} split):\n{table}')
    print(
        f'{len(split["labels"])} clips of {FLAGS.split}: features.npz, tsne.png '
        f'(t-SNE {tsne_seconds:.1f} s), {pictures} heatmap pictures in {FLAGS.output}; '
        f'projector: tensorboard --logdir {runs[-1].path} '
        f'({time.perf_counter() - started:.0f} s in all)'
    )


def _define_flags() -> None:
    flags.DEFINE_string('model', None, 'Run directory (or checkpoint step directory) to explain.')
    flags.DEFINE_string('compare', None, 'A baseline run on the same data, drawn above it.')
    flags.DEFINE_enum('split', 'test', ['test', 'validation'], 'The split to explain.')
    flags.DEFINE_string('output', None, 'Directory for features.npz, tsne.png and heatmaps/.')
    flags.DEFINE_integer('clips', 3, 'Most confident and most confused clips per class drawn.')
    flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint of the runs.')
    flags.DEFINE_string(
        'stage', '', f'Map to explain: {", ".join(STAGES)}; default sformer (conv5 without one).'
    )
    flags.DEFINE_string('compare_stage', '', 'The same for the --compare run.')
    flags.DEFINE_enum('target', 'predicted', list(TARGETS), 'The class the maps explain.')
    flags.DEFINE_integer('batch_size', 8, 'Clips per explanation batch (Grad-CAM: gradients).')
    flags.DEFINE_integer('seed', 0, 't-SNE seed.')
    flags.DEFINE_list(
        'ground_truth',
        [],
        'Synthetic data only: stages (e.g. conv3,conv4,sformer) whose heatmap mass on the '
        "generator's face / feature / occluder masks goes to ground_truth.json.",
    )
    flags.mark_flags_as_required(['model', 'output'])


if __name__ == '__main__':
    from absl import app, flags

    from former_dfer_jax import cli

    _define_flags()
    cli.run(main)
