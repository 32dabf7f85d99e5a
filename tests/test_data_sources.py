"""Raw layouts -> clip records: DFEW CSVs, reference annotation lists, AFEW folders, FERV39k,
MAFW's split files (with faces cropped at prepare time), a user's own labelled clips."""

import os
import shutil
import sys
import types

import numpy as np
import pytest
from PIL import Image

from former_dfer_jax.data import sources
from former_dfer_jax.data.sources import SourceError
from former_dfer_jax.video import decode


def test_frames_sort_numerically(tmp_path, raw_data):
    raw_data.clip(tmp_path / 'c', 12, clip=7)
    (tmp_path / 'c' / 'notes.txt').write_text('not a frame')
    names = [p.rsplit('/', 1)[1] for p in decode.list_frames(tmp_path / 'c')]
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


# ---- MAFW --------------------------------------------------------------------------------


def _mafw(tmp_path, raw_data, folds, *, parent='Train & Test Set', missing=(), extra=()):
    """MAFW as distributed: data/frames/<clip>/ + single/no_caption/set_k/{train,test}.txt.

    folds: k -> (train, test) lists of (clip number, label name); `missing` clips are
    listed but get no frame folder; `extra` lines are appended to set_1/train.txt.
    """
    root = tmp_path / 'MAFW'
    split_dir = root / parent / 'single' / 'no_caption'
    for fold, members in folds.items():
        for split, rows in zip(('train', 'test'), members, strict=True):
            path = split_dir / f'set_{fold}' / f'{split}.txt'
            lines = [f'{clip:05d}.mp4 {label}' for clip, label in rows]
            if (fold, split) == (1, 'train'):
                lines += list(extra)
            _write_list(path, lines)
            for clip, _ in rows:
                if clip not in missing:
                    raw_data.clip(root / 'data' / 'frames' / f'{clip:05d}', 3 + clip % 4, clip)
    return root


# MAFW's own order of its 11 single-expression labels (its paper, its split files' names).
MAFW_NAMES = [
    'anger',
    'disgust',
    'fear',
    'happiness',
    'neutral',
    'sadness',
    'surprise',
    'contempt',
    'anxiety',
    'helplessness',
    'disappointment',
]


def test_mafw_layout_reads_every_label_name_into_the_eleven_classes(tmp_path, raw_data):
    rows = [(i + 1, name) for i, name in enumerate(MAFW_NAMES)]  # clip k has label name k-1
    train, test = rows[:6], rows[6:]
    root = _mafw(tmp_path, raw_data, {1: (train, test), 2: (test, train)}, missing={12})
    _write_list(root / 'Train & Test Set/single/no_caption/set_2/test.txt', ['00012.mp4 fear'])
    index = sources.read_source('mafw', root)
    assert index.class_names == sources.MAFW_CLASS_NAMES
    assert len(index.class_names) == 11
    # The 7 classes of DFEW keep their labels 0..6; contempt..disappointment are 7..10.
    assert index.class_names[:7] == sources.CLASS_NAMES
    labels = {c.clip_id: index.class_names[c.label] for c in index.clips}
    assert labels == {f'{k:05d}': name for k, name in rows}
    assert index.clips[0].frames[0].endswith('/data/frames/00001/1_1.jpg')
    assert index.partitions == {
        '1': {
            'train': [f'{k:05d}' for k in range(1, 7)],
            'test': [f'{k:05d}' for k in range(7, 12)],
        },
        '2': {'train': [f'{k:05d}' for k in range(7, 12)], 'test': []},  # 00012 has no frames
    }
    assert index.report.skipped['clip folder missing'] == [str(root / 'data/frames/00012')]


def test_mafw_split_folder_as_mae_dfer_names_it_and_a_frames_root_elsewhere(tmp_path, raw_data):
    root = _mafw(tmp_path, raw_data, {3: ([(1, 'anger')], [(2, 'Disappointment')])}, parent='split')
    faces = tmp_path / 'faces'  # e.g. extract_faces output: <faces>/<clip>/<clip>_<k>.jpg
    raw_data.clip(faces / '00001', 5, 1)
    raw_data.clip(faces / '00002', 6, 2)
    index = sources.read_source('mafw', root, frames_root=faces)
    assert [(c.clip_id, c.label, c.num_frames) for c in index.clips] == [
        ('00001', 3, 5),
        ('00002', 10, 6),
    ]
    assert index.clips[0].directory == str(faces / '00001')
    assert index.partitions == {'3': {'train': ['00001'], 'test': ['00002']}}


def test_mafw_a_bad_label_name_is_an_error_naming_file_and_line(tmp_path, raw_data):
    folds = {1: ([(1, 'anger'), (2, 'fear')], [(3, 'neutral')])}
    root = _mafw(tmp_path, raw_data, folds, extra=['00004.mp4 anger_disgust'])
    path = root / 'Train & Test Set/single/no_caption/set_1/train.txt'
    with pytest.raises(SourceError) as error:
        sources.read_source('mafw', root)
    message = str(error.value)
    assert message.startswith(f"{path}:3: 'anger_disgust' is not a MAFW single-expression label")
    assert all(name in message for name in MAFW_NAMES)  # what it could have been


def test_mafw_unreadable_lines_are_skipped_and_missing_files_named(tmp_path, raw_data):
    folds = {1: ([(1, 'anger')], [(2, 'fear')])}
    root = _mafw(tmp_path, raw_data, folds, extra=['00005.mp4', ''])
    index = sources.read_source('mafw', root)
    path = root / 'Train & Test Set/single/no_caption/set_1/train.txt'
    assert index.report.skipped['unreadable split line'] == [f"{path}:2 '00005.mp4'"]
    (root / 'Train & Test Set/single/no_caption/set_1/test.txt').unlink()
    with pytest.raises(SourceError, match=r'MAFW fold 1: .*train\.txt exists but .*test\.txt is'):
        sources.read_source('mafw', root)
    shutil.rmtree(root / 'Train & Test Set')
    with pytest.raises(SourceError, match='MAFW single-label split folder not found under'):
        sources.read_source('mafw', root)


def test_mafw_through_dfer_clip_annotation_lists(tmp_path, raw_data):
    root = tmp_path / 'MAFW'
    raw_data.clip(root / 'data' / 'faces' / '00025', 4, 25)
    raw_data.clip(root / 'data' / 'faces' / '00028', 5, 28)
    lists = tmp_path / 'annotation'
    prefix = '/data/EECS-IoannisLab/datasets/MAFW'
    _write_list(lists / 'MAFW_set_1_train.txt', [f'{prefix}/data/faces/00025 4 10'])
    _write_list(lists / 'MAFW_set_1_test.txt', [f'{prefix}/data/faces/00028 5 3'])
    index = sources.read_source('mafw', root, annotation_dir=lists)
    assert [(c.clip_id, c.label) for c in index.clips] == [
        ('data/faces/00025', 10),  # disappointment
        ('data/faces/00028', 3),  # anger
    ]
    assert index.class_names == sources.MAFW_CLASS_NAMES


# ---- Face cropping at prepare time (the video package's pipeline, faked here) -----------


class _FakeFaces:
    """Stands in for former_dfer_jax.video: 'crops' each frame to a flat S x S image, finds
    no face in the first frame of a clip, and none at all in clip 00003."""

    def __init__(self, monkeypatch):
        from former_dfer_jax.errors import UserError

        class VideoError(UserError):
            pass

        self.calls: list[str] = []
        package = types.ModuleType('former_dfer_jax.video')
        package.VideoError = VideoError
        faces = types.ModuleType('former_dfer_jax.video.faces')
        faces.FaceOptions = lambda crop_size=256: types.SimpleNamespace(crop_size=crop_size)
        faces.extract_face_video = self.extract
        faces.save_crops = self.save_crops
        self.VideoError = VideoError
        monkeypatch.setitem(sys.modules, 'former_dfer_jax.video', package)
        monkeypatch.setitem(sys.modules, 'former_dfer_jax.video.faces', faces)

    @staticmethod
    def save_crops(video, directory, *, prefix, quality=95):
        os.makedirs(directory, exist_ok=True)
        for n, crop in enumerate(video.crops, start=1):
            Image.fromarray(crop).save(
                os.path.join(directory, f'{prefix}_{n}.jpg'), quality=quality
            )

    def extract(self, path, options, *, detector=None, progress=False):
        self.calls.append(str(path))
        frames = decode.list_frames(path)
        if str(path).endswith('00003'):
            raise self.VideoError(f'{path}: no face found in any of its {len(frames)} frames')
        size = options.crop_size
        crops = np.stack([np.full((size, size, 3), 10 * t, np.uint8) for t in range(len(frames))])
        return types.SimpleNamespace(
            frames=[{'index': t, 'face': None if t == 0 else {}} for t in range(len(frames))],
            crops=crops[1:],
            tracking=types.SimpleNamespace(other_tracks=[]),
        )


def test_face_crop_detect_crops_once_and_reports_clips_without_a_face(
    tmp_path, raw_data, monkeypatch
):
    fake = _FakeFaces(monkeypatch)
    folds = {1: ([(1, 'anger'), (2, 'fear'), (3, 'sadness')], [(4, 'contempt')])}
    root = _mafw(tmp_path, raw_data, folds)
    faces = tmp_path / 'cache' / 'faces'
    index = sources.read_source('mafw', root, face_crop='detect', face_dir=faces)
    assert len(fake.calls) == 4
    assert [c.clip_id for c in index.clips] == ['00001', '00002', '00004']
    assert index.partitions == {'1': {'train': ['00001', '00002'], 'test': ['00004']}}
    clip = index.clips[0]  # 00001: 4 frames on disk, no face in the first
    assert clip.directory == str(faces / '00001')
    assert [os.path.basename(f) for f in clip.frames] == [f'00001_{k}.jpg' for k in (1, 2, 3)]
    assert Image.open(clip.frames[0]).size == (256, 256)
    assert clip.label == sources.MAFW_CLASS_NAMES.index('anger')
    frames_dir = root / 'data' / 'frames'
    summary = index.report.summary(len(index.clips))
    assert summary.startswith('3 clips OK, 1 skipped.')
    no_face = f'{frames_dir / "00003"}: no face found in any of its 6 frames'
    assert f'skipped: 1 x {sources.NO_FACE_REASON}: {no_face}' in summary
    assert index.report.warn_counts['frames without a face dropped (face_crop=detect)'] == 3
    # A second prepare reuses the crops and remembers the clip without a face.
    again = sources.read_source('mafw', root, face_crop='detect', face_dir=faces)
    assert len(fake.calls) == 4
    assert again.clips == index.clips
    assert again.report.summary(3) == summary


def test_face_crop_detect_needs_a_folder_and_a_known_mode(tmp_path, raw_data):
    root = _mafw(tmp_path, raw_data, {1: ([(1, 'anger')], [(2, 'fear')])})
    with pytest.raises(SourceError, match='face_crop=detect needs a folder'):
        sources.read_source('mafw', root, face_crop='detect')
    with pytest.raises(SourceError, match="unknown face_crop 'mtcnn'"):
        sources.read_source('mafw', root, face_crop='mtcnn')


# ---- A user's own labelled clips (the files extract_faces --labels writes) ---------------


def _own(tmp_path, raw_data, classes, train, test):
    """extract_faces output: <root>/<clip>/<clip>_<k>.jpg + classes.txt, train.txt, test.txt."""
    root = tmp_path / 'mine'
    root.mkdir()
    (root / 'classes.txt').write_text(''.join(f'{name}\n' for name in classes))
    for name, rows in (('train.txt', train), ('test.txt', test)):
        _write_list(root / name, [f'{clip} {n} {label}' for clip, n, label in rows])
        for clip, n, _ in rows:
            if not clip.startswith('gone'):
                raw_data.clip(root / clip, n, len(clip))
    return root


def test_own_clips_take_their_classes_from_classes_txt(tmp_path, raw_data):
    classes = ['calm', 'not sure', 'excited']  # any names, spaces included
    train = [('interview_1', 4, 0), ('sub/party', 5, 2), ('gone', 3, 1), ('odd', 3, 3)]
    test = [('interview_2', 6, 1)]
    root = _own(tmp_path, raw_data, classes, train, test)
    index = sources.read_source('own', root)
    assert index.class_names == ('calm', 'not sure', 'excited')
    assert sources.class_names('own', root=root) == index.class_names
    assert [(c.clip_id, c.label, c.num_frames) for c in index.clips] == [
        ('interview_1', 0, 4),
        ('interview_2', 1, 6),
        ('sub/party', 2, 5),
    ]
    assert index.partitions == {
        '0': {'train': ['interview_1', 'sub/party'], 'test': ['interview_2']}
    }
    report = index.report
    assert report.skipped['clip folder missing'] == [str(root / 'gone')]
    assert report.skipped['label out of range (lists use 0..2)'] == [f'{root}/train.txt:4']
    # The lists may live elsewhere (data.annotation_dir); clip paths stay relative to root.
    lists = tmp_path / 'lists'
    shutil.copytree(root, lists, ignore=lambda d, names: [n for n in names if '.' not in n])
    for name in ('classes.txt', 'train.txt', 'test.txt'):
        (root / name).unlink()
    moved = sources.read_source('own', root, annotation_dir=lists)
    assert [c.clip_id for c in moved.clips] == [c.clip_id for c in index.clips]


@pytest.mark.parametrize(
    ('classes', 'message'),
    [
        (None, 'class list not found: {root}/classes.txt'),
        ('a\nb\na\n', "{root}/classes.txt:3: class 'a' is already on line 1"),
        ('a\n\nb\n', '{root}/classes.txt:2: blank line'),
        ('\n', '{root}/classes.txt: no class names'),
    ],
)
def test_own_bad_class_lists_are_errors_naming_the_line(tmp_path, raw_data, classes, message):
    root = _own(tmp_path, raw_data, ['a', 'b'], [('x', 3, 0)], [('y', 3, 1)])
    if classes is None:
        (root / 'classes.txt').unlink()
    else:
        (root / 'classes.txt').write_text(classes)
    with pytest.raises(SourceError) as error:
        sources.read_source('own', root)
    assert message.format(root=root) in str(error.value)
