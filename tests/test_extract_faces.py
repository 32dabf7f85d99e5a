"""extract_faces: raw videos -> DFEW-style face-crop folders, a report, training lists.

The layout and list format are the contract with the 'own' reader (data/README.md). Most
tests use the magenta-square stand-in detector of test_predict; the end-to-end test runs
the command with MTCNN on real faces, trains one tiny epoch on its output and evaluates.
"""

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from former_dfer_jax import files
from former_dfer_jax.data import extract_faces as command
from former_dfer_jax.data import face_extraction as ef
from former_dfer_jax.data import sources
from former_dfer_jax.errors import UserError
from former_dfer_jax.run_lock import LOCK_FILE
from former_dfer_jax.video import decode, faces
from former_dfer_jax.video.faces import FaceOptions
from tests import videos
from tests.test_cli import run_entry_point
from tests.test_predict import SquareDetector, square_frames
from tests.test_run_lock import dead_pid, in_use_line, live_lock, read_only, write_lock

SETTINGS = ef.ExtractSettings(min_frames=3, face_options=FaceOptions(crop_size=32))


def square_video(path, num_frames=6, face=True):
    positions = [(20 + t, 16) if face else None for t in range(num_frames)]
    return videos.write_video(str(path), square_frames(positions), fps=10)


def extract(input_dir, root, settings=SETTINGS, **kwargs):
    return ef.extract(
        str(input_dir), str(root), settings, detector_factory=SquareDetector, progress=False,
        **kwargs,
    )  # fmt: skip


# ---- Inputs and names --------------------------------------------------------------------


def test_inputs_are_found_recursively_with_safe_unique_clip_names(tmp_path):
    for name in ('b/my clip.mp4', 'b/my clip.avi', 'a/x.mov', 'top.mp4', '.hidden/h.mp4'):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b'')
    videos.write_frames_dir(tmp_path / 'a' / 'frames dir', square_frames([None]), prefix='f')
    (tmp_path / 'notes.txt').write_text('not a video')
    found = ef.find_inputs(str(tmp_path))
    assert [(i.relative, i.clip) for i in found] == [
        ('a/frames dir', 'a/frames_dir'),  # a folder of frames is one input
        ('a/x.mov', 'a/x'),
        ('b/my clip.avi', 'b/my_clip'),
        ('b/my clip.mp4', 'b/my_clip_2'),
        ('top.mp4', 'top'),
    ]
    assert [i.clip for i in ef.find_inputs(str(tmp_path), skip=[str(tmp_path / 'a')])] == [
        'b/my_clip', 'b/my_clip_2', 'top',
    ]  # fmt: skip
    # --input itself a folder of frames: that one clip.
    (frames_dir,) = ef.find_inputs(str(tmp_path / 'a' / 'frames dir'))
    assert frames_dir.clip == 'frames_dir'


def test_labels_match_inputs_by_path_name_or_stem(tmp_path):
    for name in ('a/one.mp4', 'b/one.mp4', 'two.mp4'):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b'')
    inputs = ef.find_inputs(str(tmp_path))
    csv = tmp_path / 'labels.csv'
    csv.write_text('video,label\na/one.mp4,happy\nb/one,sad\ntwo,sad\nthree.mp4,happy\n')
    rows = ef.read_labels(str(csv))
    matched, missing = ef.match_labels(rows, inputs, str(tmp_path))
    assert {clip: row.label for clip, row in matched.items()} == {
        'a/one': 'happy', 'b/one': 'sad', 'two': 'sad',
    }  # fmt: skip
    assert missing == [f'{csv}:5: three.mp4']
    csv.write_text('video,label\none.mp4,happy\n')  # both a/one.mp4 and b/one.mp4
    with pytest.raises(ef.ExtractError, match=r'labels.csv:2: .one.mp4. fits several inputs'):
        ef.match_labels(ef.read_labels(str(csv)), inputs, str(tmp_path))


@pytest.mark.parametrize(
    'text, message',
    [
        ('name,emotion\na,b\n', "expected the header 'video,label'"),
        ('video,label\na\n', r'labels.csv:2: expected 2 fields'),
        ('video,label,split\na,b,val\n', "split 'val': expected 'train' or 'test'"),
        ('video,label\n', 'no rows after the header'),
    ],
)
def test_a_bad_labels_file_is_one_clear_error(tmp_path, text, message):
    csv = tmp_path / 'labels.csv'
    csv.write_text(text)
    with pytest.raises(ef.ExtractError, match=message):
        ef.read_labels(str(csv))


def test_classes_are_sorted_or_in_the_given_order():
    rows = [ef.LabelRow('v', label, '', 'x') for label in ('sad', 'happy', 'sad', 'calm')]
    assert ef.class_order(rows) == ['calm', 'happy', 'sad']
    assert ef.class_order(rows, ['sad', 'happy', 'calm', 'bored']) == [
        'sad', 'happy', 'calm', 'bored',
    ]  # fmt: skip
    with pytest.raises(ef.ExtractError, match=r"labels \['calm'\] are not among --classes"):
        ef.class_order(rows, ['sad', 'happy'])


def test_the_split_keeps_the_csv_and_stratifies_the_rest_reproducibly():
    clips = {f'c{i}': (i % 2, '') for i in range(10)} | {'fixed': (0, 'test'), 'one': (2, '')}
    split = ef.split_clips(clips, test_fraction=0.2, seed=0)
    assert split['fixed'] == 'test' and split['one'] == 'train'  # a lone clip trains
    for label in (0, 1):  # 5 clips per class: round(0.2 * 5) = 1 test each
        members = [c for c, (lab, s) in clips.items() if lab == label and not s]
        assert sum(split[c] == 'test' for c in members) == 1
    assert split == ef.split_clips(clips, test_fraction=0.2, seed=0)
    assert split != ef.split_clips(clips, test_fraction=0.2, seed=1)


# ---- Extracting ------------------------------------------------------------------------


def test_clips_are_dfew_style_folders_and_failures_are_reported(tmp_path):
    inputs = tmp_path / 'in'
    (inputs / 'sub').mkdir(parents=True)
    square_video(inputs / 'sub' / 'good.mp4', 6)
    square_video(inputs / 'noface.mp4', 6, face=False)
    square_video(inputs / 'short.mp4', 2)
    videos.write_garbage(inputs / 'broken.mp4')
    root = tmp_path / 'root'
    report = extract(inputs, root)
    frames = sorted(os.listdir(root / 'sub' / 'good'), key=decode.frame_sort_key)
    assert frames == [f'good_{k}.jpg' for k in range(1, 7)]
    with Image.open(root / 'sub' / 'good' / 'good_1.jpg') as image:
        assert image.size == (32, 32) and image.mode == 'RGB'
    assert sorted(os.listdir(root)) == ['extract_faces.json', 'sub']  # nothing of the failures
    failed = {os.path.basename(f['video']): f['reason'] for f in report['failed']}
    assert set(failed) == {'noface.mp4', 'short.mp4', 'broken.mp4'}
    assert 'no face' in failed['noface.mp4']
    assert 'too few face frames (2 of 2' in failed['short.mp4']
    assert failed['broken.mp4'].startswith(str(inputs / 'broken.mp4'))
    assert json.loads((root / 'extract_faces.json').read_text())['failed'] == report['failed']
    assert [e['clip'] for e in report['extracted']] == ['sub/good']


def test_a_rerun_skips_finished_clips_and_redoes_half_written_ones(tmp_path):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    for name in ('a', 'b'):
        square_video(inputs / f'{name}.mp4', 4)
    root = tmp_path / 'root'
    extract(inputs, root)
    # An interrupted run leaves b's temporary folder and no b/.
    os.rename(root / 'b', root / '.b.tmp')
    os.remove(root / '.b.tmp' / 'b_4.jpg')
    report = extract(inputs, root)
    assert [e['clip'] for e in report['existing']] == ['a']
    assert [e['clip'] for e in report['extracted']] == ['b']
    assert sorted(os.listdir(root / 'b')) == [f'b_{k}.jpg' for k in range(1, 5)]
    assert not (root / '.b.tmp').exists()


def four_videos(tmp_path):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    for name in ('v1', 'v2', 'v3', 'v4'):
        square_video(inputs / f'{name}.mp4', 4)
    return inputs


def test_a_resubmitted_run_while_the_first_runs_is_refused_in_one_line(tmp_path, capsys):
    inputs, root = four_videos(tmp_path), tmp_path / 'root'
    with live_lock(root, what='extract_faces run') as pid:
        status = run_entry_point(command, f'--input={inputs}', f'--output={root}')
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f'error: {in_use_line(root, "extract_faces run", pid)}']
    assert os.listdir(root) == [LOCK_FILE]  # nothing written; the first run's lock kept


def test_a_dead_runs_lock_is_taken_over_and_its_clips_are_reported_as_there(tmp_path, caplog):
    inputs, root = four_videos(tmp_path), tmp_path / 'root'
    extract(inputs, root)
    # The first run was killed after its last clip: its lock and a staging folder remain.
    write_lock(str(root), pid=dead_pid(), what='extract_faces run')
    shutil.copytree(root / 'v1', root / '.v1.tmp')
    with caplog.at_level('WARNING'):
        report = extract(inputs, root)
    assert 'Taking over the stale lock' in caplog.text
    assert [e['clip'] for e in report['existing']] == ['v1', 'v2', 'v3', 'v4']
    assert report['extracted'] == report['failed'] == []
    assert all(e['num_frames'] == 4 for e in report['existing'])
    assert sorted(os.listdir(root)) == ['extract_faces.json', 'v1', 'v2', 'v3', 'v4']


def test_a_clip_finished_meanwhile_by_another_writer_is_kept_and_counted_there(
    tmp_path, monkeypatch
):
    inputs, root = four_videos(tmp_path), tmp_path / 'root'
    save_crops = ef.faces.save_crops

    def racing_save_crops(source, directory, *, prefix, quality):
        paths = save_crops(source, directory, prefix=prefix, quality=quality)
        if prefix == 'v2':  # a writer not holding the lock renames its v2 first
            shutil.copytree(directory, root / 'v2')
            (root / 'v2' / 'theirs').write_text('')
        return paths

    monkeypatch.setattr(ef.faces, 'save_crops', racing_save_crops)
    report = extract(inputs, root)
    assert [e['clip'] for e in report['extracted']] == ['v1', 'v3', 'v4']
    assert report['existing'] == [{'video': str(inputs / 'v2.mp4'), 'clip': 'v2', 'num_frames': 4}]
    assert report['failed'] == []
    assert (root / 'v2' / 'theirs').exists()  # theirs is not replaced; ours was dropped
    assert not [name for name in os.listdir(root) if name.endswith('.tmp')]


def test_a_folder_without_crops_in_a_clips_place_is_never_taken_as_the_clip(tmp_path):
    inputs, root = four_videos(tmp_path), tmp_path / 'root'
    (root / 'v1').mkdir(parents=True)  # empty: removed, the clip extracted
    (root / 'v2').mkdir()
    (root / 'v2' / 'notes.txt').write_text('mine')  # not empty: left as it is, the video fails
    report = extract(inputs, root)
    assert [e['clip'] for e in report['extracted']] == ['v1', 'v3', 'v4']
    (failed,) = report['failed']
    assert (
        failed['reason']
        == f'{root / "v2"} is in the way (it holds no crops): remove it and run again'
    )
    assert os.listdir(root / 'v2') == ['notes.txt']


def test_the_report_keeps_the_clips_of_earlier_runs_on_other_videos(tmp_path, capsys):
    inputs, root = four_videos(tmp_path), tmp_path / 'root'
    extract(inputs, root)
    shutil.rmtree(root / 'v4')  # deleted by hand: no longer described
    more = tmp_path / 'more'
    more.mkdir()
    square_video(more / 'v5.mp4', 4)
    report = extract(more, root)
    assert [e['clip'] for e in report['extracted']] == ['v5']
    assert [(e['clip'], e['num_frames']) for e in report['from_earlier_runs']] == [
        ('v1', 4), ('v2', 4), ('v3', 4),
    ]  # fmt: skip
    # A third run on the first videos: v5 is now the earlier run's.
    report = extract(inputs, root)
    assert [e['clip'] for e in report['existing']] == ['v1', 'v2', 'v3']
    assert [e['clip'] for e in report['extracted']] == ['v4']
    assert [e['clip'] for e in report['from_earlier_runs']] == ['v5']
    command.print_summary(report, str(root))
    assert '1 clips extracted, 3 already there, 0 failed; 1 more from earlier runs' in (
        capsys.readouterr().out
    )


def test_a_read_only_output_is_refused_before_any_video_is_read(tmp_path, monkeypatch):
    inputs, root = four_videos(tmp_path), tmp_path / 'root'
    read_only(monkeypatch, root)

    def no_detector():
        raise AssertionError('a detector was built')

    with pytest.raises(UserError) as caught:
        ef.extract(str(inputs), str(root), SETTINGS, detector_factory=no_detector, progress=False)
    assert str(caught.value) == (
        f'{root}: cannot write to this extract_faces --output folder (Read-only file system)'
    )


def test_nothing_extracted_is_an_error(tmp_path):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    videos.write_garbage(inputs / 'broken.mp4')
    with pytest.raises(ef.ExtractError, match='no clip extracted'):
        extract(inputs, tmp_path / 'root')
    assert json.loads((tmp_path / 'root' / 'extract_faces.json').read_text())['failed']


def test_labels_give_the_lists_the_own_reader_reads(tmp_path):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    labels = {'h1': 'happy', 'h2': 'happy', 'h3': 'happy', 's1': 'sad', 's2': 'sad', 'x': 'sad'}
    for name in labels:
        square_video(inputs / f'{name}.mp4', 5, face=name != 'x')
    square_video(inputs / 'unlabelled.mp4', 5)
    csv = tmp_path / 'labels.csv'
    csv.write_text('video,label\n' + ''.join(f'{n}.mp4,{lab}\n' for n, lab in labels.items()))
    root = tmp_path / 'root'
    report = extract(inputs, root, labels=str(csv))
    assert not (root / 'unlabelled').exists() and report['not_labelled'] == [
        str(inputs / 'unlabelled.mp4')
    ]
    assert (root / 'classes.txt').read_text() == 'happy\nsad\n'
    lines = {split: (root / f'{split}.txt').read_text().splitlines() for split in ('train', 'test')}
    listed = {line.split()[0]: (split, line) for split in lines for line in lines[split]}
    assert set(listed) == {'h1', 'h2', 'h3', 's1', 's2'}  # x had no face: not listed
    for clip, (_, line) in listed.items():
        assert line == f'{clip} 5 {0 if clip.startswith("h") else 1}'
    assert sum(s == 'test' for s, _ in listed.values()) == 2  # one per class
    index = sources.read_source('own', str(root))
    assert index.class_names == ('happy', 'sad')
    assert sorted(c.clip_id for c in index.clips) == sorted(listed)
    assert sorted(index.partitions['0']['test']) == sorted(
        c for c, (s, _) in listed.items() if s == 'test'
    )


def test_workers_give_the_same_clips(tmp_path):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    for name in ('a', 'b', 'c'):
        square_video(inputs / f'{name}.mp4', 4)
    videos.write_garbage(inputs / 'broken.mp4')
    one = extract(inputs, tmp_path / 'one')
    two = extract(inputs, tmp_path / 'two', dataclasses.replace(SETTINGS, workers=2))
    assert [e['clip'] for e in two['extracted']] == ['a', 'b', 'c']
    assert [f['video'] for f in two['failed']] == [f['video'] for f in one['failed']]
    for clip in ('a', 'b', 'c'):
        for k in range(1, 5):
            a = np.asarray(Image.open(tmp_path / 'one' / clip / f'{clip}_{k}.jpg'))
            b = np.asarray(Image.open(tmp_path / 'two' / clip / f'{clip}_{k}.jpg'))
            np.testing.assert_array_equal(a, b)


# ---- End to end: the command with MTCNN, then training on its output --------------------


def test_own_videos_extract_train_and_evaluate(tmp_path, tiny_run):
    """Labelled with two of DFEW's classes and --classes in DFEW's order, the clips train
    the tiny run's very model (7 classes): the compiled steps of `tiny_run` are reused
    from the compilation cache, which keeps this test short."""
    from former_dfer_jax import evaluate
    from former_dfer_jax.training import train
    from tests.tiny import tiny_config

    inputs = tmp_path / 'videos'
    inputs.mkdir()
    rows = ['video,label']
    for k in range(6):
        frames, _ = videos.moving_face_frames(6, size=(128, 112), face_size=48, seed=k)
        if k % 2:  # the second class: mirrored faces
            frames = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
        videos.write_video(inputs / f'clip {k}.mp4', frames, fps=6)
        rows.append(f'clip {k}.mp4,{"sadness" if k % 2 else "happiness"}')
    videos.write_garbage(inputs / 'broken.mp4')
    rows.append('broken.mp4,happiness')
    (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
    root = tmp_path / 'faces'
    done = subprocess.run(
        [
            sys.executable, '-m', 'former_dfer_jax.data.extract_faces', f'--input={inputs}',
            f'--output={root}', f'--labels={tmp_path / "labels.csv"}', '--detect_every=2',
            '--min_frames=4', f'--classes={",".join(sources.CLASS_NAMES)}',
        ],
        capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'Traceback' not in done.stderr and 'broken.mp4' in done.stderr
    assert '--config.model.num_classes=7' in done.stdout
    assert sorted(os.listdir(root / 'clip_0')) == [f'clip_0_{k}.jpg' for k in range(1, 7)]
    assert (root / 'classes.txt').read_text().splitlines() == list(sources.CLASS_NAMES)
    assert len((root / 'train.txt').read_text().splitlines()) == 4  # one clip per class tests

    config = tiny_config()
    config.data.name = 'own'
    config.data.root = str(root)
    config.data.fold = 0
    config.data.stored_frame_size = 32  # the 256 x 256 crops stored at the model's size
    workdir = str(tmp_path / 'run')
    train.train_and_evaluate(config, workdir)
    summary = evaluate.evaluate_checkpoint(config, workdir, 'latest')
    assert np.sum(summary['confusion_matrix']) == 2  # both test clips, once each
    assert list(summary['per_class_recall']) == list(sources.CLASS_NAMES)


def test_a_full_disk_stops_the_run_in_one_line_keeping_the_finished_clips(tmp_path, monkeypatch):
    inputs, root = four_videos(tmp_path), tmp_path / 'root'
    real_save = faces.save_crops

    def save_crops(track, directory, **kwargs):
        if track.path.endswith('v3.mp4'):
            os.makedirs(directory, exist_ok=True)
            open(os.path.join(directory, 'v3_1.jpg'), 'wb').close()  # a half-written crop
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(track, directory, **kwargs)

    monkeypatch.setattr(faces, 'save_crops', save_crops)
    with pytest.raises(files.NoSpaceError) as caught:
        extract(inputs, root)
    message = str(caught.value)
    assert message.startswith(
        f'the face crops of {inputs / "v3.mp4"} not saved: no space left on {root} ('
    )
    assert 'its half-written folder was removed; the clips already extracted are kept' in message
    assert sorted(os.listdir(root)) == ['v1', 'v2']  # no .v3.tmp, and the lock released
