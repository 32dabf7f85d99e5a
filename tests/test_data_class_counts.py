"""The prepared data carries its dataset's classes: MAFW's 11, a user's own N (classes.txt),
through prepare, info and the batches."""

from configs import mafw
from former_dfer_jax import data, default_config
from former_dfer_jax.data import cache, sources
from tests.test_data_sources import MAFW_NAMES


def _small(config, tmp_path):
    config.data.cache_dir = str(tmp_path / 'cache')
    config.data.image_size, config.data.num_segments, config.data.segment_length = 16, 2, 2
    config.data.stored_frame_size = 0
    config.batch_size = config.eval_batch_size = 4
    return config


def test_mafw_prepares_eleven_classes(tmp_path, raw_data):
    root = tmp_path / 'MAFW'
    split_dir = root / 'Train & Test Set' / 'single' / 'no_caption' / 'set_1'
    split_dir.mkdir(parents=True)
    rows = [(k, MAFW_NAMES[k % 11]) for k in range(1, 23)]
    for split, members in (('train', rows[:11]), ('test', rows[11:])):
        (split_dir / f'{split}.txt').write_text(''.join(f'{k:05d}.mp4 {n}\n' for k, n in members))
    for k, _ in rows:
        raw_data.clip(root / 'data' / 'frames' / f'{k:05d}', 4, k)
    config = _small(mafw.get_config(), tmp_path)
    config.data.root, config.data.face_crop = str(root), 'none'
    info = data.info(config)
    assert (info.num_classes, info.class_names) == (11, sources.MAFW_CLASS_NAMES)
    assert info.class_counts == {'train': [1] * 11, 'test': [1] * 11}
    labels = {int(b) for batch in data.load(config, 'test') for b in batch['label']}
    assert labels == set(range(11))
    assert cache.builder_config_name(config) == 'mafw'
    config.data.face_crop = 'detect'
    assert cache.builder_config_name(config) == 'mafw_faces'


def test_own_clips_prepare_with_their_classes(tmp_path, raw_data):
    root = tmp_path / 'mine'
    root.mkdir()
    (root / 'classes.txt').write_text('calm\nnot sure\nexcited\n')
    lines = {'train': [], 'test': []}
    for i in range(12):
        raw_data.clip(root / f'v{i}', 4, i)
        lines['test' if i < 3 else 'train'].append(f'v{i} 4 {i % 3}\n')
    for split, rows in lines.items():
        (root / f'{split}.txt').write_text(''.join(rows))
    config = _small(default_config.get_config(), tmp_path)
    config.data.name, config.data.fold, config.data.root = 'own', 0, str(root)
    config.model.num_classes = 3
    info = data.info(config)
    assert (info.num_classes, info.class_names) == (3, ('calm', 'not sure', 'excited'))
    assert info.class_counts == {'train': [3, 3, 3], 'test': [1, 1, 1]}
    assert cache.builder_config_name(config).startswith('own_')
