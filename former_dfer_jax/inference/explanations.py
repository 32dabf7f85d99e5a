"""Explanations of a trained model, pure and jit-able: where it looks in each frame, which
frames it relies on, and the vector its classifier reads.

Wrap the functions with `bind` (the model's state becomes a jit argument); `model` is an
eval-mode `FormerDFER` (`inference.open_run(...).model`). Stages ('conv4' = layer3's
output, the paper's conv4 map; 'conv5' = layer4's; 'sformer' = the S-Former's output map;
also 'conv2', 'conv3'):

* `feature_heatmaps`: mean |activation| over channels per frame (paper Fig. 3);
* `grad_cam`: Grad-CAM of a class logit (default: the predicted class) per frame;
* `attention_rollout` / `temporal_attention`: T-Former attention rollout to the frames;
* `occlusion_scores`: drop in class probability when a frame is replaced by its neighbour
  (the only temporal importance of the GRU / LSTM baselines);
* `clip_features` / `split_features`: the vector the classifier reads;
* `explain_clips`: all of the above for the heatmap pictures (`explanation_plots`);
* `synthetic_heatmap_shares`: heatmap mass on the synthetic dataset's ground truth.

Heatmaps are [B, T, H, W] at the frame size, min-max normalised to [0, 1] per clip.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from former_dfer_jax import files
from former_dfer_jax.errors import UserError
from former_dfer_jax.models.former_dfer import FormerDFER, ModelSpec
from former_dfer_jax.models.spatial import S_FORMER_POINT

if TYPE_CHECKING:
    from former_dfer_jax.inference.runs import Run

# Stage name -> the model's tap point (see `models.spatial.CSFormer`).
STAGES = {
    'conv2': 'layer1',
    'conv3': 'layer2',
    'conv4': 'layer3',
    'conv5': 'layer4',
    'sformer': S_FORMER_POINT,
}
# The class the maps explain: the model's prediction or the clip's label.
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


def split_outputs(
    fns: Mapping[str, Callable[..., Any]],
    config: ml_collections.ConfigDict,
    split: str = 'test',
    *,
    progress: bool = False,
    on_batch: Callable[[np.ndarray, np.ndarray, dict[str, dict[str, np.ndarray]]], None]
    | None = None,
) -> dict[str, Any]:
    """Every clip of `split` once through each of `fns` (name -> `clip_features` bound to
    a model): 'runs' (name -> features, logits, probabilities, predictions), 'labels' and
    'clip_ids'. `on_batch(videos, labels, outputs)` sees each batch, padding rows dropped."""
    parts: dict[str, dict[str, list[np.ndarray]]] = {
        name: {'features': [], 'logits': []} for name in fns
    }
    labels, clip_ids = [], []
    batches = split_batches(config, split)
    total = num_batches(config, split)
    bar = files.progress(
        batches, desc=f'Features of {split}', total=total, unit='batch', enabled=progress
    )
    for batch in bar:
        keep = batch['mask']
        outs = {}
        for name, fn in fns.items():
            out = jax.device_get(fn(batch['video']))
            logits = np.asarray(out['logits'])[keep]
            outs[name] = {
                'features': np.asarray(out['features'])[keep],
                'logits': logits,
                'probabilities': _softmax(logits),
            }
            parts[name]['features'].append(outs[name]['features'])
            parts[name]['logits'].append(logits)
        labels.append(batch['label'][keep])
        clip_ids.extend(clip_id_text(c) for c in batch['clip_id'][keep])
        if on_batch is not None:
            on_batch(batch['video'][keep], labels[-1], outs)
    runs = {}
    for name, part in parts.items():
        logits = np.concatenate(part['logits'])
        runs[name] = {
            'features': np.concatenate(part['features']),
            'logits': logits,
            'probabilities': _softmax(logits),
            'predictions': np.argmax(logits, axis=-1).astype(np.int32),
        }
    return {
        'runs': runs,
        'labels': np.concatenate(labels).astype(np.int32),
        'clip_ids': np.array(clip_ids),
    }


def split_features(
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    split: str = 'test',
    *,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """features, logits, labels, predictions and clip_ids of every clip of `split` once."""
    out = split_outputs({'model': bind(model, clip_features)}, config, split, progress=progress)
    ours = out['runs']['model']
    return {
        'features': ours['features'],
        'logits': ours['logits'],
        'labels': out['labels'],
        'predictions': ours['predictions'],
        'clip_ids': out['clip_ids'],
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def num_batches(config: ml_collections.ConfigDict, split: str) -> int | None:
    """The number of eval batches of `split` (None where unknown): a progress bar's total."""
    from former_dfer_jax import data

    return data.info(config).num_eval_batches.get(split)


def clip_id_text(clip_id: bytes | str) -> str:
    """A clip id as the pipeline yields it (bytes or str) as text."""
    return clip_id.decode() if isinstance(clip_id, bytes) else str(clip_id)


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
    generator's ground truth (`data.synthetic_dataset.clip_masks` of each clip's sampled frames).

    Per stage and map ('feature_map', 'grad_cam') and region: the share of a clip's
    heatmap mass on the region, averaged over the clips, with its standard error
    ('<region>_se'). 'face' (the face outline) and 'features' (the moving features) use
    all the clip's frames; 'occluder' only its frames that show one, and only the clips
    that have such frames ('occluded_clips'). 'area' holds the same for a flat heatmap
    (the regions' own area): what a map blind to the image scores. Heatmaps are the
    displayed ones (min-max normalised per clip).
    """
    from former_dfer_jax.data import sampling, synthetic_dataset

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

    total = num_batches(config, split)
    batches = split_batches(config, split)
    bar = files.progress(batches, desc='Ground truth', total=total, unit='batch', enabled=progress)
    for batch in bar:
        outs = {stage: jax.device_get(fn(batch['video'])) for stage, fn in fns.items()}
        for i in np.flatnonzero(batch['mask']):
            clip_id = int(clip_id_text(batch['clip_id'][i]))
            length = len(synthetic_dataset.dataset_clip(params, clip_id).expression)
            frames = sampling.sample_frame_indices(length, u, v, train=False).tolist()
            masks = synthetic_dataset.clip_masks(params, clip_id, frames)
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


# ---- Comparing two runs ----------------------------------------------------------------------

# Data settings two runs must share to be explained on the same clips.
SAME_DATA = (
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


def check_comparable(a: Run, b: Run) -> None:
    """An ExplainError unless runs `a` and `b` were trained on the same clips (`SAME_DATA`,
    and the seed where it draws the validation split) with the same class names."""
    da, db = a.config.data, b.config.data
    keys = [f'data.{k}' for k in SAME_DATA if da.get(k) != db.get(k)]
    if float(da.val_fraction) > 0 and a.config.seed != b.config.seed:
        keys.append('seed (it draws the validation split)')
    if keys:
        raise ExplainError(
            f'--compare={b.run_dir}: its data differ from those of {a.run_dir} in '
            f'{", ".join(keys)}; compare runs trained on the same clips'
        )
    if a.class_names != b.class_names:
        raise ExplainError(
            f'--compare={b.run_dir}: its classes ({", ".join(b.class_names)}) are not those '
            f'of {a.run_dir} ({", ".join(a.class_names)}); compare runs of the same classes'
        )


# ---- Choosing the clips to draw ---------------------------------------------------------


class Extremes:
    """Per class, the n clips of highest ('confident') and of lowest ('confused')
    probability of their true class, with their videos: only these stay in memory."""

    def __init__(self, n: int):
        self.n = n
        self._heaps: dict[tuple[int, str], list[tuple[float, int]]] = {}
        self.videos: dict[int, np.ndarray] = {}
        self.rows = 0  # clips offered by `offer_batch`

    def offer_batch(
        self, videos: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
    ) -> None:
        """The next rows (counted from 0 over the calls): videos [B, ...], labels [B],
        class probabilities [B, C]."""
        for video, label, p in zip(videos, labels, probabilities, strict=True):
            self.offer(self.rows, int(label), float(p[label]), video)
            self.rows += 1

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
