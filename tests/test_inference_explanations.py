"""inference.explanations and explanation_plots: Grad-CAM finds what a logit reads, rollout
and occlusion are what they claim, every ablation variant can be explained, and the
pictures show every class."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from former_dfer_jax import ablations
from former_dfer_jax.inference import explanation_plots, explanations
from former_dfer_jax.models import build_abstract_model
from former_dfer_jax.models.former_dfer import ModelSpec, SpatialSpec, TemporalSpec
from former_dfer_jax.models.spatial import no_tap
from tests.tiny import tiny_config

GRID = 4  # the hand-built models' maps are GRID x GRID cells
SIZE = 16  # frames of SIZE x SIZE pixels: one cell is 4 x 4 pixels
REGION = (slice(0, 2), slice(2, 4))  # the cells class 0 reads: top right


class PositionModel(nnx.Module):
    """A hand-built model without weights. Its 'layer4' map has one channel per cell, equal
    to the frame's mean brightness in that cell and zero elsewhere (a position detector
    each); logit 0 sums the channels of the REGION cells over the frames, logit 1 is 0."""

    def __init__(self, num_frames: int = 2, image_size: int = SIZE):
        self.spec = ModelSpec(
            image_size=image_size,
            num_frames=num_frames,
            spatial=SpatialSpec(enabled=False),
            temporal=TemporalSpec(kind='gru'),
        )

    def __call__(self, clips: jax.Array, tap=no_tap) -> jax.Array:
        b, t, h, w, _ = clips.shape
        cell = clips.mean(-1).reshape(b * t, GRID, h // GRID, GRID, w // GRID).mean((2, 4))
        fmap = tap('layer4', cell[..., None] * jnp.eye(GRID * GRID).reshape(GRID, GRID, -1))
        frames = tap('frame_features', fmap.sum((1, 2)).reshape(b, t, -1))
        clip = tap('clip_features', frames.mean(1))
        reads = np.zeros((GRID, GRID), np.float32)
        reads[REGION] = 1
        return jnp.stack([clip @ reads.ravel(), jnp.zeros(b)], axis=-1)


class FrameReader(nnx.Module):
    """Logits from the mean brightness of the frames in `reads` only (none: a constant)."""

    def __init__(self, reads: tuple[int, ...], num_frames: int = 5):
        self.reads = reads
        self.spec = ModelSpec(image_size=SIZE, num_frames=num_frames)

    def __call__(self, clips: jax.Array, tap=no_tap) -> jax.Array:
        brightness = clips.mean(axis=(2, 3, 4))  # [B, T]
        seen = sum((brightness[:, t] * (t + 1) for t in self.reads), jnp.zeros(len(clips)))
        return jnp.stack([seen, -seen, jnp.ones_like(seen)], axis=-1)


def random_video(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, np.float32)


def test_grad_cam_peaks_on_the_region_the_logit_reads():
    clips = random_video((3, 2, SIZE, SIZE, 3)) * 0.5 + 0.25  # no cell is dark
    model = PositionModel()
    out = explanations.bind(model, explanations.grad_cam, stage='conv5')(clips)
    cam = np.asarray(out['grad_cam'])
    assert cam.shape == (3, 2, SIZE, SIZE)
    np.testing.assert_array_equal(out['class_index'], [0, 0, 0])  # the predicted class
    inside = np.zeros((SIZE, SIZE), bool)
    inside[0:8, 8:16] = True  # REGION's cells in pixels
    for frame in cam.reshape(-1, SIZE, SIZE):
        y, x = np.unravel_index(np.argmax(frame), frame.shape)
        assert inside[y, x]
        # Cells outside are exactly zero; bilinear upsampling bleeds one cell's half width
        # (2 pixels) over the region's edge, so 3 pixels away the map is zero.
        assert frame[inside].mean() > 0.3
        assert frame[:, :5].max() == 0 and frame[11:].max() == 0
    # The class the region does not feed has no gradient anywhere: an empty map.
    other = explanations.bind(model, explanations.grad_cam, stage='conv5')(
        clips, jnp.ones(3, jnp.int32)
    )
    assert np.asarray(other['grad_cam']).max() == 0


def test_heatmaps_are_normalised_per_clip():
    clips = random_video((2, 2, SIZE, SIZE, 3))
    clips[1] *= 0.1  # a dim clip still spans [0, 1]
    maps = np.asarray(
        explanations.bind(PositionModel(), explanations.feature_heatmaps, stage='conv5')(clips)
    )
    assert maps.shape == (2, 2, SIZE, SIZE)
    for clip in maps:
        assert clip.min() == 0 and clip.max() == pytest.approx(1.0)


def test_attention_rollout_rows_sum_to_one():
    logits = random_video((3, 2, 4, 5, 5)) * 8  # [L, B, heads, N, N]
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    rollout = np.asarray(jax.jit(explanations.attention_rollout)(weights))
    assert rollout.shape == (2, 5, 5)
    assert rollout.min() >= 0
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-6)


def test_attention_rollout_by_hand():
    # One layer, uniform attention over 3 tokens: (U + I) / 2; two layers: its square.
    uniform = jnp.full((1, 1, 1, 3, 3), 1 / 3)
    one = (np.full((3, 3), 1 / 3) + np.eye(3)) / 2
    np.testing.assert_allclose(explanations.attention_rollout(uniform)[0], one, atol=1e-6)
    two = jnp.concatenate([uniform, uniform])
    np.testing.assert_allclose(explanations.attention_rollout(two)[0], one @ one, atol=1e-6)
    # Attention to self only leaves every token on itself.
    self_only = jnp.eye(3)[None, None, None]
    np.testing.assert_allclose(explanations.attention_rollout(self_only)[0], np.eye(3), atol=1e-6)


def test_neighbour_frames():
    np.testing.assert_array_equal(explanations.neighbour_frames(5), [1, 0, 1, 2, 3])
    np.testing.assert_array_equal(explanations.neighbour_frames(1), [0])


def test_occlusion_is_zero_where_the_model_ignores_frames():
    clips = random_video((2, 5, SIZE, SIZE, 3))
    scores = np.asarray(explanations.bind(FrameReader(()), explanations.occlusion_scores)(clips))
    np.testing.assert_array_equal(scores, 0.0)  # ignores time altogether
    # Reading frame 2 only: occluding frame 2 (by frame 1) changes the prediction; frame 3
    # replaced by frame 2 and every other frame change nothing the model sees.
    scores = np.asarray(explanations.bind(FrameReader((2,)), explanations.occlusion_scores)(clips))
    np.testing.assert_array_equal(scores[:, [0, 1, 3, 4]], 0.0)
    assert np.all(np.abs(scores[:, 2]) > 1e-4)
    # A static clip: replacing a frame by its neighbour replaces it by itself.
    static = np.repeat(clips[:, :1], 5, axis=1)
    scores = np.asarray(
        explanations.bind(FrameReader((0, 2, 4)), explanations.occlusion_scores)(static)
    )
    np.testing.assert_array_equal(scores, 0.0)


@pytest.mark.parametrize('variant', ['', *ablations.VARIANTS, 'depths_2_1'])
def test_every_variant_yields_heatmaps_and_features(variant: str):
    # Shapes by tracing alone (jax.eval_shape): nothing is compiled, so all variants are cheap.
    config = tiny_config()
    if variant:
        ablations.apply_variant(config, variant)
    model = build_abstract_model(config.model)
    model.eval()
    graphdef, state = nnx.split(model)
    b, t, s = 2, config.model.num_frames, config.model.image_size
    clips = jax.ShapeDtypeStruct((b, t, s, s, 3), jnp.float32)
    stage = explanations.default_stage(model.spec)
    assert stage == ('sformer' if config.model.spatial.enabled else 'conv5')
    if variant == 'sformer_after_conv5':
        stage = 'conv4'  # a map before the S-Former
    out = jax.eval_shape(
        lambda state, x: explanations.explain_clips(nnx.merge(graphdef, state), x, stage=stage),
        state,
        clips,
    )
    width = config.model.temporal.rnn_hidden_size if variant.endswith(('gru', 'lstm')) else 512
    assert out['features'].shape == (b, width)
    assert out['grad_cam'].shape == out['feature_heatmap'].shape == (b, t, s, s)
    assert out['logits'].shape == out['probabilities'].shape == (b, 7)
    assert out['occlusion'].shape == (b, t)
    attention = config.model.temporal.kind == 'transformer'
    assert ('frame_importance' in out) == attention
    if attention:
        assert out['frame_importance'].shape == (b, t)
        tokens = t + (config.model.temporal.pooling == 'class_token')
        assert out['rollout'].shape == (b, tokens, tokens)


def test_stages_a_model_lacks_are_refused():
    spec = ModelSpec(spatial=SpatialSpec(enabled=False))
    assert explanations.default_stage(spec) == 'conv5'
    with pytest.raises(explanations.ExplainError, match='no S-Former'):
        explanations.check_stage(spec, 'sformer')
    with pytest.raises(explanations.ExplainError, match='conv6'):
        explanations.check_stage(ModelSpec(), 'conv6')


def test_mass_share():
    heat = np.zeros((2, 4, 4))
    heat[0, :2] = 1.0  # top half
    mask = np.zeros((4, 4))
    mask[0] = 1.0  # top row
    np.testing.assert_allclose(explanations.mass_share(heat, mask), [0.5, np.nan])


def test_synthetic_ground_truth_shares(tiny_run):
    from former_dfer_jax.data import sampling, synthetic_dataset
    from former_dfer_jax.data.cache import prepare
    from former_dfer_jax.data.pipeline import split_indices

    config = tiny_run[0]
    model = PositionModel(config.model.num_frames, config.model.image_size)
    shares = explanations.synthetic_heatmap_shares(model, config, ['conv5'])
    prepared = prepare(config)
    test = split_indices(prepared, config)['test']
    assert shares['clips'] == len(test)
    # A flat map's share is the region's area: check the face's by hand.
    params = dict(config.data.synthetic)
    areas = []
    for i in test:
        clip_id = int(prepared.metadata['clip_ids'][i])
        n = prepared.metadata['num_frames'][i]
        frames = sampling.sample_frame_indices(n, 2, 2, train=False).tolist()
        areas.append(synthetic_dataset.clip_masks(params, clip_id, frames)['face'].mean())
    assert shares['area']['face'] == pytest.approx(np.mean(areas), rel=1e-6)
    for kind in ('feature_map', 'grad_cam'):
        for region in ('face', 'features'):
            assert 0 <= shares['conv5'][kind][region] <= 1
            assert shares['conv5'][kind][f'{region}_se'] >= 0
    # The model reads the top right quarter: its Grad-CAM has a quarter-frame footprint.
    assert shares['conv5']['grad_cam']['face'] != pytest.approx(shares['area']['face'])
    # The same pipeline gives the library's features: every test clip once.
    features = explanations.split_features(model, config)
    expected = sorted(prepared.metadata['clip_ids'][i] for i in test)
    assert sorted(features['clip_ids']) == expected
    assert features['features'].shape == (len(test), GRID * GRID)


def test_extremes_keep_the_most_and_least_confident_of_each_class():
    extremes = explanations.Extremes(2)
    p_true = {0: 0.9, 1: 0.1, 2: 0.5, 3: 0.95, 4: 0.3, 5: 0.7}
    for row, p in p_true.items():
        extremes.offer(row, row % 2, p, np.full(1, row))
    # Class 0 (rows 0, 2, 4): confident 0, 2; confused 4, 2 (2 counts as confident).
    # Class 1 (rows 1, 3, 5): confident 3, 5; confused 1, 5.
    assert extremes.selected() == [
        (0, 0, 'confident'),
        (1, 1, 'confused'),
        (2, 0, 'confident'),
        (3, 1, 'confident'),
        (4, 0, 'confused'),
        (5, 1, 'confident'),
    ]
    assert sorted(extremes.videos) == [0, 1, 2, 3, 4, 5]
    extremes.offer(6, 0, 0.6, np.full(1, 6))  # confident: row 2 stays a confused one
    extremes.offer(7, 0, 0.65, np.full(1, 7))  # confident: row 6 is dropped
    assert sorted(extremes.videos) == [0, 1, 2, 3, 4, 5, 7]


def test_plot_clip_and_tsne_write_pictures(tmp_path):
    t = 4
    video = random_video((t, SIZE, SIZE, 3))
    picture = explanation_plots.ClipPicture(
        title='model',
        feature_heatmap=random_video((t, SIZE, SIZE)),
        grad_cam=random_video((t, SIZE, SIZE)),
        occlusion=np.linspace(-0.1, 0.2, t),
        frame_importance=np.full(t, 1 / t),
    )
    baseline = explanation_plots.ClipPicture(
        'baseline', picture.grad_cam, picture.feature_heatmap, picture.occlusion, None
    )
    explanation_plots.plot_clip(video, [baseline, picture], str(tmp_path / 'clip.png'), 'clip 1')
    features = random_video((40, 16))
    embedding = explanation_plots.tsne(features)
    assert embedding.shape == (40, 2)
    labels = np.arange(40) % 7
    names = tuple(f'class {i}' for i in range(7))
    explanation_plots.plot_tsne(
        {'a': (embedding, labels), 'b': (embedding, labels)}, names, str(tmp_path / 't.png')
    )
    for name in ('clip.png', 't.png'):
        assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_clip_picture_takes_one_clip_of_an_explanation():
    out = {
        'feature_heatmap': random_video((2, 3, SIZE, SIZE)),
        'grad_cam': random_video((2, 3, SIZE, SIZE), seed=1),
        'occlusion': random_video((2, 3)),
    }
    picture = explanation_plots.clip_picture(out, 1, 'title')
    np.testing.assert_array_equal(picture.grad_cam, out['grad_cam'][1])
    np.testing.assert_array_equal(picture.feature_heatmap, out['feature_heatmap'][1])
    np.testing.assert_array_equal(picture.occlusion, out['occlusion'][1])
    assert picture.frame_importance is None  # a GRU / LSTM model: no attention
    out['frame_importance'] = np.full((2, 3), 1 / 3)
    np.testing.assert_array_equal(
        explanation_plots.clip_picture(out, 0, 't').frame_importance, 1 / 3
    )


def test_tsne_legend_lists_every_class_in_its_own_colour():
    names = tuple(f'class {i}' for i in range(11))
    embedding = random_video((6, 2))
    labels = np.array([0, 3, 3, 7, 10, 10])  # classes without clips keep their entry
    fig = explanation_plots.tsne_figure({'a': (embedding, labels)}, names)
    legend = fig.axes[-1].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == list(names)
    colours = {tuple(np.round(h.get_facecolor()[0], 4)) for h in legend.legend_handles}
    assert len(colours) == len(names)


# ---- Grad-CAM against the hand-computed definition, on a toy model ------------------------


class _LinearEvidence:
    """A stand-in for FormerDFER with one frame per clip: its conv4 map is the clip's
    pixels (channels `:C`, 2 x 2), and the logit of class 0 is sum(weights * map)
    (class 1: its negative), so the gradient w.r.t. the map is `weights` itself."""

    spec = ModelSpec()

    def __init__(self, weights: np.ndarray):
        self.weights = jnp.asarray(weights, jnp.float32)  # [2, 2, C]

    def __call__(self, clips: jax.Array, tap) -> jax.Array:
        b, t = clips.shape[:2]
        channels = self.weights.shape[-1]
        fmap = tap(explanations.STAGES['conv4'], clips[..., :channels].reshape(b * t, 2, 2, -1))
        evidence = jnp.sum(fmap * self.weights, axis=(1, 2, 3)).reshape(b, t).mean(1)
        features = tap('clip_features', evidence[:, None])
        return jnp.concatenate([features, -features], axis=-1)


def _grad_cam_of(weights: np.ndarray, fmap: np.ndarray) -> np.ndarray:
    clips = np.zeros((1, 1, 2, 2, 3), np.float32)
    clips[0, 0, ..., : fmap.shape[-1]] = fmap
    out = explanations.grad_cam(
        _LinearEvidence(weights), jnp.asarray(clips), jnp.asarray([0]), stage='conv4'
    )
    return np.asarray(out['grad_cam'])[0, 0]  # 2 x 2 frames: the map at its own size


def _hand_grad_cam(weights: np.ndarray, fmap: np.ndarray) -> np.ndarray:
    """ReLU(sum_c mean_hw(gradient_c) * map_c), min-max scaled (the gradient = weights)."""
    cam = np.maximum((fmap * weights.mean(axis=(0, 1))).sum(-1), 0.0)
    return (cam - cam.min()) / (cam.max() - cam.min())


def test_grad_cam_keeps_only_positive_evidence():
    # Channel 0 raises the class logit, channel 1 lowers it. Pixel (0, 0) shows channel 0,
    # pixel (0, 1) channel 1, the other two nothing: only (0, 0) is evidence for the class;
    # without the ReLU the negative pixel would push the empty ones up to 0.5.
    weights = np.stack([np.ones((2, 2)), -np.ones((2, 2))], axis=-1)
    fmap = np.zeros((2, 2, 2), np.float32)
    fmap[0, 0, 0] = fmap[0, 1, 1] = 1.0
    cam = _grad_cam_of(weights, fmap)
    np.testing.assert_allclose(cam, [[1.0, 0.0], [0.0, 0.0]], rtol=0, atol=1e-6)


def test_grad_cam_weights_each_channel_by_its_spatial_mean_gradient():
    # The gradient varies within the channel (3 at (0, 0), 1 at (1, 1)); Grad-CAM weighs
    # the whole channel by the mean, 1: the map itself, [[0.5, 1], [0, 0]] once scaled.
    # Weighting each pixel by its own gradient would give [[1, 0], [0, 0]].
    weights = np.array([[3.0, 0.0], [0.0, 1.0]])[..., None]
    fmap = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)[..., None]
    cam = _grad_cam_of(weights, fmap)
    np.testing.assert_allclose(cam, _hand_grad_cam(weights, fmap), rtol=0, atol=1e-6)
    np.testing.assert_allclose(cam, [[0.5, 1.0], [0.0, 0.0]], rtol=0, atol=1e-6)
