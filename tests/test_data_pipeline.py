"""The tf.data pipeline: coverage, sampling as specified, determinism, resume, sharding."""

import numpy as np
import pytest
import tensorflow as tf

from former_dfer_jax import default_config
from former_dfer_jax.data import pipeline
from former_dfer_jax.data.benchmark import benchmark_input, sampled_frames
from former_dfer_jax.data.cache import prepare

# 22 clips; lengths cover N = 1, N < U, N = U, N = U + V - 1 and longer clips.
LENGTHS = [1, 3, 8, 9, 10, 16, 17, 20, 33, 40, 63]
CLIPS = {i: (LENGTHS[(i - 1) % len(LENGTHS)], i % 7) for i in range(1, 23)}
FOLD1_TRAIN, FOLD1_TEST = list(range(1, 17)), list(range(17, 23))

# The reference's rule (U = 8 segments of V = 2 frames, N frames), worked by hand for
# these lengths. Test: if N > U + V - 1, tick = (N - 1) / 8 and start_i = int(tick / 2 +
# tick i), else every start is 0. Frames are start_i and start_i + 1.
EVAL_STARTS = {  # the test clips' lengths (ids 17..22)
    16: [0, 2, 4, 6, 8, 10, 12, 14],  # tick 1.875: int(0.9375 + 1.875 i)
    17: [1, 3, 5, 7, 9, 11, 13, 15],  # tick 2: 1 + 2 i
    20: [1, 3, 5, 8, 10, 13, 15, 17],  # tick 2.375: int(1.1875 + 2.375 i)
    33: [2, 6, 10, 14, 18, 22, 26, 30],  # tick 4: 2 + 4 i
    40: [2, 7, 12, 17, 21, 26, 31, 36],  # tick 4.875: int(2.4375 + 4.875 i)
    63: [3, 11, 19, 27, 34, 42, 50, 58],  # tick 7.75: int(3.875 + 7.75 i)
}
# Train: avg = (N - 1) // 8; when avg > 0, start_i is drawn from segment i, [i avg,
# (i + 1) avg); avg = 0 means N <= 8, and every start is 0 (the sorted random starts for
# avg = 0 and N > U need V > 2). Frames are start_i and min(start_i + 1, N - 1).
TRAIN_SEGMENT = {1: 0, 3: 0, 8: 0, 9: 1, 10: 1, 16: 1, 17: 2, 20: 2, 33: 4, 40: 4, 63: 7}


@pytest.fixture(scope='module')
def config(tmp_path_factory, raw_data):
    root = tmp_path_factory.mktemp('dfew')
    raw_data.dfew(root, CLIPS, {1: (FOLD1_TRAIN, FOLD1_TEST), 2: (FOLD1_TEST, FOLD1_TRAIN)})
    config = default_config.get_config()
    config.data.root = str(root)
    config.data.cache_dir = str(tmp_path_factory.mktemp('cache'))
    config.data.image_size = 16
    config.data.stored_frame_size = 0
    config.batch_size = 4
    config.eval_batch_size = 4
    prepare(config, progress=False)
    return config


def batches(config, split, **kwargs):
    return list(pipeline.load(config, split, **kwargs))


def stacked(batch_list, key):
    return np.concatenate([b[key] for b in batch_list])


def ids(values):
    return [int(v) for v in values]


def test_info(config):
    info = pipeline.info(config)
    assert info.num_clips == {'train': 16, 'test': 6}
    assert info.steps_per_epoch == 4
    assert info.num_eval_batches == {'test': 2}
    assert info.num_classes == 7 and info.class_names[0] == 'happiness'
    assert info.class_counts['test'] == [1, 1, 0, 1, 1, 1, 1]  # labels of ids 17..22: id % 7
    assert (info.num_frames, info.image_size) == (16, 16)


def test_eval_covers_every_clip_once_padding_masked(config, raw_data):
    got = batches(config, 'test')
    assert len(got) == 2
    for b in got:
        assert b['video'].shape == (4, 16, 16, 16, 3) and b['video'].dtype == np.float32
        assert b['label'].dtype == np.int32 and b['mask'].dtype == bool
        assert b['video'].min() >= 0.0 and b['video'].max() <= 1.0
    mask = stacked(got, 'mask')
    clip_ids = ids(stacked(got, 'clip_id'))
    assert mask.tolist() == [True] * 6 + [False] * 2
    assert clip_ids[:6] == FOLD1_TEST
    assert stacked(got, 'label')[:6].tolist() == [CLIPS[i][1] for i in FOLD1_TEST]
    # The frames the model sees are the rule's (frame t has red = 4 t in the fixtures).
    frames = raw_data.frame_of(stacked(got, 'video'))
    for row, clip_id in enumerate(clip_ids[:6]):
        starts = np.array(EVAL_STARTS[CLIPS[clip_id][0]])
        expected = np.stack([starts, starts + 1], axis=1).ravel()
        np.testing.assert_array_equal(frames[row], expected, err_msg=f'clip {clip_id}')


def test_train_epoch_is_a_permutation_with_frames_drawn_by_the_rule(config, raw_data):
    got = batches(config, 'train', epoch=0)
    assert len(got) == 4
    clip_ids = ids(stacked(got, 'clip_id'))
    assert sorted(clip_ids) == FOLD1_TRAIN  # 16 clips, 4 full batches: nothing dropped
    assert clip_ids != sorted(clip_ids)
    assert stacked(got, 'mask').all()
    assert stacked(got, 'label').tolist() == [CLIPS[i][1] for i in clip_ids]
    prepared = prepare(config)
    record = {cid: i for i, cid in enumerate(prepared.metadata['clip_ids'])}
    plans = pipeline.clip_plans(
        prepared, config, np.array([record[f'{c:05d}'] for c in clip_ids]), train=True, epoch=0
    )
    video = stacked(got, 'video')
    frames = raw_data.frame_of(video).reshape(len(clip_ids), 8, 2)
    drawn = []  # starts of segments wider than one frame, relative to the segment
    for row, clip_id in enumerate(clip_ids):
        n = CLIPS[clip_id][0]
        starts, width = frames[row, :, 0], TRAIN_SEGMENT[n]
        np.testing.assert_array_equal(frames[row, :, 1], np.minimum(starts + 1, n - 1))
        if width == 0:
            assert np.all(starts == 0), (clip_id, starts)
        else:
            first = width * np.arange(8)
            assert np.all((first <= starts) & (starts < first + width)), (clip_id, starts)
            if width > 1:
                drawn.extend(starts - first)
    assert len(drawn) == 5 * 8 and 0 < np.count_nonzero(drawn) < 40  # random in segments
    # ... and the plan the pipeline reads them by says the same.
    np.testing.assert_array_equal(frames.reshape(len(clip_ids), 16), plans['frames'])
    # Blue ramps left to right in every fixture frame: reversed exactly when flipped.
    blue = video[..., 2].mean(axis=(1, 2))  # [clips, width]
    rising = blue[:, -1] > blue[:, 0]
    np.testing.assert_array_equal(rising, ~plans['flips'])
    assert 0 < plans['flips'].sum() < len(clip_ids)


def test_last_partial_train_batch_is_dropped(config):
    config = config.copy_and_resolve_references()
    config.batch_size = 6
    got = batches(config, 'train')
    assert len(got) == 2 == pipeline.info(config).steps_per_epoch
    assert len(set(ids(stacked(got, 'clip_id')))) == 12


def test_same_seed_and_epoch_give_identical_batches(config):
    first, second = batches(config, 'train', epoch=3), batches(config, 'train', epoch=3)
    for a, b in zip(first, second, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = batches(config, 'train', epoch=4)
    assert ids(stacked(first, 'clip_id')) != ids(stacked(other, 'clip_id'))
    reseeded = config.copy_and_resolve_references()
    reseeded.seed = 1
    assert ids(stacked(batches(reseeded, 'train', epoch=3), 'clip_id')) != ids(
        stacked(first, 'clip_id')
    )


def test_augmentation_changes_with_the_epoch(config):
    def by_clip(epoch):
        got = batches(config, 'train', epoch=epoch)
        return dict(zip(ids(stacked(got, 'clip_id')), stacked(got, 'video'), strict=True))

    a, b = by_clip(0), by_clip(1)
    assert sum(not np.array_equal(a[c], b[c]) for c in a) >= 12


@pytest.mark.parametrize('split', ['train', 'test'])
def test_start_batch_resumes_exactly(config, split):
    full = batches(config, split, epoch=2)
    resumed = batches(config, split, epoch=2, start_batch=1)
    assert len(resumed) == len(full) - 1
    for a, b in zip(full[1:], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert batches(config, split, epoch=2, start_batch=len(full)) == []
    with pytest.raises(ValueError, match='start_batch'):
        pipeline.load(config, split, start_batch=len(full) + 1)


@pytest.mark.parametrize('split', ['train', 'test'])
def test_two_processes_together_equal_one(config, split):
    one = batches(config, split, epoch=1)
    halves = [batches(config, split, epoch=1, process_index=p, process_count=2) for p in range(2)]
    assert len(halves[0]) == len(halves[1]) == len(one)
    for whole, a, b in zip(one, *halves, strict=True):
        assert len(a['label']) == 2
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([a[key], b[key]]))


def test_batch_must_split_evenly_over_processes(config):
    with pytest.raises(ValueError, match='global batch size 4 is not divisible by the 3'):
        pipeline.load(config, 'train', process_index=0, process_count=3)


def test_stratified_validation_split(config):
    config = config.copy_and_resolve_references()
    config.data.val_fraction = 0.5
    prepared = prepare(config)
    splits = pipeline.split_indices(prepared, config)
    base = pipeline.split_indices(prepared, default_fold_config(config))
    assert np.intersect1d(splits['train'], splits['validation']).size == 0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([splits['train'], splits['validation']])), base['train']
    )
    labels = np.asarray(prepared.metadata['labels'])
    per_class_train = np.bincount(labels[base['train']], minlength=7)  # [2, 3, 3, 2, 2, 2, 2]
    per_class_val = np.bincount(labels[splits['validation']], minlength=7)
    np.testing.assert_array_equal(per_class_val, np.round(per_class_train * 0.5))
    again = pipeline.split_indices(prepared, config)
    np.testing.assert_array_equal(again['validation'], splits['validation'])
    info = pipeline.info(config)
    assert info.num_clips['validation'] == len(splits['validation'])
    got = batches(config, 'validation')
    assert len(got) == info.num_eval_batches['validation']
    val_ids = ids(stacked(got, 'clip_id')[stacked(got, 'mask')])
    assert val_ids == [int(prepared.metadata['clip_ids'][i]) for i in splits['validation']]
    reseeded = config.copy_and_resolve_references()
    reseeded.seed = 7
    other = pipeline.split_indices(prepared, reseeded)['validation']
    assert not np.array_equal(other, splits['validation'])


def default_fold_config(config):
    config = config.copy_and_resolve_references()
    config.data.val_fraction = 0.0
    return config


def test_other_fold_and_bad_requests(config):
    fold2 = config.copy_and_resolve_references()
    fold2.data.fold = 2
    assert pipeline.info(fold2).num_clips == {'train': 6, 'test': 16}
    fold3 = config.copy_and_resolve_references()
    fold3.data.fold = 3
    with pytest.raises(
        ValueError, match=r"data.fold=3 is not in the prepared dfew data \(folds: \['1', '2'\]\)"
    ):
        pipeline.info(fold3)
    with pytest.raises(ValueError, match=r"split 'validation' needs data\.val_fraction > 0"):
        pipeline.load(config, 'validation')
    with pytest.raises(ValueError, match='split must be one of'):
        pipeline.load(config, 'val')
    big = config.copy_and_resolve_references()
    big.batch_size = 32
    with pytest.raises(ValueError, match='16 train clips are fewer than one global batch of 32'):
        pipeline.load(big, 'train')


def test_benchmark_input_reports_throughput(config):
    result = benchmark_input(config, num_batches=5, warmup=1)  # runs past one epoch (4 batches)
    assert result['batch_size'] == 4 and result['num_batches'] == 5
    assert result['clips_per_s'] > 0 and result['clips_per_cpu_s'] > 0
    assert result['dataset'] == 'dfew'
    # The decode limit of the epoch's 16 train clips, and the pipeline's share of it.
    assert result['decode_clips'] == 16
    assert result['decode_clips_per_s'] > 0 and result['decode_crop_clips_per_s'] > 0
    assert result['fraction_of_decode_limit'] == pytest.approx(
        result['clips_per_s'] / result['decode_clips_per_s']
    )


def test_decode_limit_decodes_the_frames_the_pipeline_samples(config, raw_data):
    frames = sampled_frames(config, 4)
    assert frames['encoded'].shape == (4, 16) and frames['windows'].shape == (4, 4)
    decoded = np.stack(
        [[tf.io.decode_jpeg(f).numpy() / 255.0 for f in clip] for clip in frames['encoded']]
    )
    first = next(pipeline.load(config, 'train'))
    np.testing.assert_array_equal(raw_data.frame_of(decoded), raw_data.frame_of(first['video']))
