"""Raw layouts -> clip records: DFEW CSVs, reference annotation lists, AFEW folders, FERV39k."""

import shutil

import pytest

from former_dfer_jax.data import sources
from former_dfer_jax.data.sources import SourceError


def test_frames_sort_numerically(tmp_path, raw_data):
    raw_data.clip(tmp_path / 'c', 12, clip=7)
    (tmp_path / 'c' / 'notes.txt').write_text('not a frame')
    names = [p.rsplit('/', 1)[1] for p in sources.list_frames(tmp_path / 'c')]
    assert names == [f'7_{t}.jpg' for t in range(1, 13)]  # a string sort gives 7_1, 7_10, ...


def test_dfew_csv_layout(tmp_path, raw_data):
    clips = {1: (3, 0), 2: (12, 6), 10: (5, 3), 11: (4, 2)}
    raw_data.dfew(tmp_path, clips, {1: ([1, 2], [10, 11]), 2: ([10, 11], [1, 2])})
    index = sources.read_source('dfew', tmp_path)
    assert [c.clip_id for c in index.clips] == ['00001', '00002', '00010', '00011']
    assert [c.label for c in index.clips] == [0, 6, 3, 2]  # CSV labels 1..7 -> 0..6
    assert [c.num_frames for c in index.clips] == [3, 12, 5, 4]
    assert index.partitions == {
        '1': {'train': ['00001', '00002'], 'test': ['00010', '00011']},
        '2': {'train': ['00010', '00011'], 'test': ['00001', '00002']},
    }
    assert index.clips[1].frames[-1].endswith('/00002/2_12.jpg')
    assert index.report.num_skipped == 0


def test_dfew_underscore_spelling_and_extra_unzip_level(tmp_path, raw_data):
    raw_data.dfew(
        tmp_path,
        {5: (4, 1), 6: (4, 4)},
        {3: ([5], [6])},
        spelling='single_labeled',
        extra_level=True,
    )
    index = sources.read_source('dfew', tmp_path)
    assert [c.clip_id for c in index.clips] == ['00005', '00006']
    assert '/clip_224x224/clip_224x224/00005' in index.clips[0].directory
    assert index.partitions == {'3': {'train': ['00005'], 'test': ['00006']}}


def test_dfew_bad_rows_are_skipped_with_their_place(tmp_path, raw_data):
    clips = {1: (3, 0), 2: (3, 1), 3: (3, 2), 4: (3, 3), 5: (3, 4)}
    raw_data.dfew(tmp_path, clips, {1: ([1, 2, 3], [4, 5])})
    shutil.rmtree(raw_data.clip_dir(tmp_path, 2))  # listed, but its folder is gone
    for f in raw_data.clip_dir(tmp_path, 3).iterdir():  # an empty clip folder
        f.unlink()
    train_csv = tmp_path / 'EmoLabel_DataSplit' / 'train(single-labeled)' / 'set_1.csv'
    with open(train_csv, 'a') as f:
        f.write('1,1\n')  # duplicate id
        f.write('4,8\n')  # label out of range
        f.write('x,2\n')  # not a number
    index = sources.read_source('dfew', tmp_path)
    assert [c.clip_id for c in index.clips] == ['00001', '00004', '00005']
    assert index.partitions['1'] == {'train': ['00001'], 'test': ['00004', '00005']}
    summary = index.report.summary(len(index.clips))
    assert summary.startswith('3 clips OK, 5 skipped.')
    assert f'clip folder missing: {raw_data.clip_dir(tmp_path, 2)}' in summary
    assert f'clip folder has no image files: {raw_data.clip_dir(tmp_path, 3)}' in summary
    assert f'duplicate clip id in a fold (later row ignored): {train_csv}:5' in summary
    assert f'label out of range (DFEW CSVs use 1..7): {train_csv}:6' in summary
    assert f"unreadable CSV row: {train_csv}:7 ['x', '2']" in summary


def test_clip_in_train_and_test_of_a_fold_stays_in_one(tmp_path, raw_data):
    raw_data.dfew(tmp_path, {1: (3, 0), 2: (3, 1)}, {1: ([1, 2], [2])})
    index = sources.read_source('dfew', tmp_path)
    assert index.partitions['1'] == {'train': ['00001', '00002'], 'test': []}
    assert index.report.skip_counts['duplicate clip id in a fold (later row ignored)'] == 1


def test_conflicting_labels_across_folds_skip_the_clip(tmp_path, raw_data):
    raw_data.dfew(tmp_path, {1: (3, 0), 2: (3, 1)}, {1: ([1], [2])})
    folder = tmp_path / 'EmoLabel_DataSplit'
    (folder / 'train(single-labeled)' / 'set_2.csv').write_text('video_name,label\n2,5\n')
    (folder / 'test(single-labeled)' / 'set_2.csv').write_text('video_name,label\n1,1\n')
    index = sources.read_source('dfew', tmp_path)
    assert [c.clip_id for c in index.clips] == ['00001']
    assert index.report.skipped['clip listed with different labels'] == [
        f'{folder}/test(single-labeled)/set_1.csv:2'
    ]


@pytest.mark.parametrize(
    ('damage', 'message'),
    [
        (lambda root: shutil.rmtree(root), 'dataset root not found: {root}'),
        (lambda root: shutil.rmtree(root / 'Clip'), 'DFEW clip folders not found under {root}'),
        (
            lambda root: shutil.rmtree(root / 'EmoLabel_DataSplit'),
            'DFEW label folder EmoLabel_DataSplit not found: {root}/EmoLabel_DataSplit',
        ),
        (
            lambda root: (root / 'EmoLabel_DataSplit/test(single-labeled)/set_1.csv').unlink(),
            'its test CSV ({root}/EmoLabel_DataSplit/test(single-labeled)/set_1.csv) is missing',
        ),
        (
            lambda root: [p.unlink() for p in root.glob('EmoLabel_DataSplit/*/*.csv')],
            'no DFEW split CSVs found: expected {root}/EmoLabel_DataSplit/train(single-labeled)',
        ),
        (
            lambda root: (root / 'EmoLabel_DataSplit/train(single-labeled)/set_1.csv').write_text(
                'id;label\n1;1\n'
            ),
            "set_1.csv: expected the header 'video_name,label'",
        ),
    ],
)
def test_dfew_fatal_problems_name_the_path(tmp_path, raw_data, damage, message):
    root = raw_data.dfew(tmp_path / 'DFEW', {1: (3, 0), 2: (3, 1)}, {1: ([1], [2])})
    damage(root)
    with pytest.raises(SourceError, match=None) as error:
        sources.read_source('dfew', root)
    assert message.format(root=root) in str(error.value)


def _write_list(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(f'{line}\n' for line in lines))


def test_reference_lists_with_prefix_rewrite(tmp_path, raw_data):
    root = tmp_path / 'DFEW_Face'  # the reference's layout: clip folders directly in root
    for clip_id, n in (('00001', 4), ('00002', 6), ('00003', 5)):
        raw_data.clip(root / clip_id, n, clip=int(clip_id))
    lists = tmp_path / 'lists'
    prefix = '/home/user/datasets/DFEW_Face'
    _write_list(lists / 'DFEW_set_1_train.txt', [f'{prefix}/00001 4 1', f'{prefix}/00002 9 5'])
    _write_list(lists / 'DFEW_set_1_test.txt', [f'{prefix}/00003 5 6', f'{prefix}/00004 5 0'])
    index = sources.read_source('dfew', root, annotation_dir=lists)  # default prefix
    assert [(c.clip_id, c.num_frames, c.label) for c in index.clips] == [
        ('00001', 4, 1),
        ('00002', 6, 5),  # the disk's count, not the list's 9
        ('00003', 5, 6),
    ]
    assert index.partitions == {'1': {'train': ['00001', '00002'], 'test': ['00003']}}
    assert index.report.warn_counts == {
        'frame count on disk differs from the annotation list (using the disk count)': 1
    }
    assert index.report.skipped['clip folder missing'] == [str(root / '00004')]
    # An explicit prefix works the same way.
    _write_list(lists / 'DFEW_set_1_train.txt', ['/mnt/x/00001 4 1'])
    _write_list(lists / 'DFEW_set_1_test.txt', ['/mnt/x/00003 5 6'])
    index = sources.read_source('dfew', root, annotation_dir=lists, annotation_prefix='/mnt/x/')
    assert [c.directory for c in index.clips] == [str(root / '00001'), str(root / '00003')]


def test_reference_lists_bad_lines_and_missing_pair(tmp_path, raw_data):
    root = tmp_path / 'AFEW_Face'
    raw_data.clip(root / 'train' / 'Happiness' / 'a', 3)
    raw_data.clip(root / 'validation' / 'Fear' / 'b', 3)
    lists = tmp_path / 'lists'
    prefix = '/home/user/datasets/AFEW_Face'
    _write_list(
        lists / 'AFEW_train.txt',
        [f'{prefix}/train/Happiness/a 3 0', f'{prefix}/train/Happiness/z 3 7', 'garbage'],
    )
    with pytest.raises(SourceError, match=r'annotation list missing: .*AFEW_validation\.txt'):
        sources.read_source('afew', root, annotation_dir=lists)
    _write_list(lists / 'AFEW_validation.txt', [f'{prefix}/validation/Fear/b 3 3'])
    index = sources.read_source('afew', root, annotation_dir=lists)
    assert index.partitions == {
        '0': {'train': ['train/Happiness/a'], 'test': ['validation/Fear/b']}
    }
    report = index.report
    assert report.skipped['label out of range (lists use 0..6)'] == [f'{lists}/AFEW_train.txt:2']
    assert report.skipped['unreadable annotation line'] == [f"{lists}/AFEW_train.txt:3 'garbage'"]
    assert report.warnings['label differs from the emotion folder (using the list)'] == [
        f'{lists}/AFEW_validation.txt:1'  # Fear is 6, the list says 3
    ]


def test_afew_folder_layout_both_spellings(tmp_path, raw_data):
    root = tmp_path / 'AFEW'
    raw_data.clip(root / 'train' / 'Angry' / '001', 3)
    raw_data.clip(root / 'train' / 'Happiness' / '002', 3)
    raw_data.clip(root / 'train' / 'Sad' / '003', 3)
    raw_data.clip(root / 'train' / 'Bored' / '004', 3)
    raw_data.clip(root / 'validation' / 'Surprise' / '005', 3)
    raw_data.clip(root / 'validation' / 'Fear' / '006', 3)
    index = sources.read_source('afew', root)
    labels = {c.clip_id: c.label for c in index.clips}
    assert labels == {
        'train/Angry/001': 3,
        'train/Happiness/002': 0,
        'train/Sad/003': 1,
        'validation/Fear/006': 6,
        'validation/Surprise/005': 4,
    }
    assert index.partitions['0']['test'] == ['validation/Fear/006', 'validation/Surprise/005']
    assert index.report.skipped['unknown emotion folder'] == [str(root / 'train' / 'Bored')]
    shutil.rmtree(root / 'validation')
    with pytest.raises(SourceError, match=f'AFEW validation folder not found: {root}/validation'):
        sources.read_source('afew', root)


def test_ferv39k_needs_lists_and_reads_its_scene_layout(tmp_path, raw_data):
    root = tmp_path / 'FERV39K'
    raw_data.clip(root / '2_ClipsforFaceCrop' / 'Action' / 'Happy' / '0015', 3)
    raw_data.clip(root / '2_ClipsforFaceCrop' / 'Crime' / 'Happy' / '0015', 4)
    raw_data.clip(root / '2_ClipsforFaceCrop' / 'Crime' / 'Disgust' / '0002', 5)
    with pytest.raises(SourceError, match='FERV39k: its split comes from the reference annotation'):
        sources.read_source('ferv39k', root)
    lists = tmp_path / 'lists'
    prefix = '/home/user/datasets/FERV39K/2_ClipsforFaceCrop'
    _write_list(
        lists / 'FERV39K_train.txt',
        [f'{prefix}/Action/Happy/0015 3 0', f'{prefix}/Crime/Disgust/0002 5 5'],
    )
    _write_list(lists / 'FERV39K_test.txt', [f'{prefix}/Crime/Happy/0015 4 0'])
    index = sources.read_source('ferv39k', root, annotation_dir=lists)
    assert index.partitions == {
        '0': {
            'train': [
                '2_ClipsforFaceCrop/Action/Happy/0015',
                '2_ClipsforFaceCrop/Crime/Disgust/0002',
            ],
            'test': ['2_ClipsforFaceCrop/Crime/Happy/0015'],
        }
    }
    assert index.report.num_skipped == 0 and not index.report.warn_counts


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(SourceError, match="unknown dataset 'kinetics'"):
        sources.read_source('kinetics', tmp_path)
    with pytest.raises(SourceError, match="no dataset root given for 'dfew'"):
        sources.read_source('dfew', '')
    with pytest.raises(SourceError, match=r'annotation list folder .* not found'):
        sources.read_source('dfew', tmp_path, annotation_dir=tmp_path / 'nope')
    with pytest.raises(SourceError, match='no annotation lists for dfew in'):
        sources.read_source('dfew', tmp_path, annotation_dir=tmp_path)
