"""The explain command: it covers a split exactly once, and names classes as the run does
(an own dataset's 11 classes in the t-SNE legend, the projector and the heatmap folders)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from former_dfer_jax import explain
from former_dfer_jax.inference import explanation_plots
from tests.test_cli import run_entry_point
from tests.test_run_lock import in_use_line, live_lock, read_only
from tests.tiny import OWN_CLASS_NAMES


def read_tsv(path: str) -> list[list[str]]:
    with open(path, newline='') as f:
        return list(csv.reader(f, delimiter='\t'))


def test_command_line_covers_the_split_once(tiny_run, tmp_path):
    from former_dfer_jax.data.cache import prepare
    from former_dfer_jax.data.pipeline import split_indices

    config, workdir, _ = tiny_run
    out = tmp_path / 'explain'
    command = [
        sys.executable,
        '-m',
        'former_dfer_jax.explain',
        f'--model={workdir}',
        '--split=test',
        f'--output={out}',
        '--clips=0',
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    prepared = prepare(config)
    test = split_indices(prepared, config)['test']
    expected = {prepared.metadata['clip_ids'][i]: prepared.metadata['labels'][i] for i in test}
    assert len(expected) % config.eval_batch_size, 'the last batch should be padded'

    saved = np.load(out / 'features.npz')
    ids = list(saved['clip_ids'])
    assert sorted(ids) == sorted(expected)  # every clip once, no padding rows
    assert dict(zip(ids, saved['labels'].tolist(), strict=True)) == expected
    assert saved['features'].shape == (len(ids), 512)
    np.testing.assert_array_equal(saved['predictions'], saved['probabilities'].argmax(-1))
    np.testing.assert_allclose(saved['probabilities'].sum(-1), 1.0, atol=1e-5)
    assert (out / 'tsne.png').is_file()

    projector = explanation_plots.projector_dir(workdir)
    assert 'projector_config.pbtxt' in os.listdir(projector)
    rows = read_tsv(os.path.join(projector, 'features_test_metadata.tsv'))
    assert rows[0] == ['label', 'prediction', 'clip_id']
    assert [r[2] for r in rows[1:]] == ids
    vectors = np.loadtxt(os.path.join(projector, 'features_test.tsv'), delimiter='\t')
    np.testing.assert_allclose(vectors, saved['features'], rtol=1e-5, atol=1e-6)
    assert not [name for name in os.listdir(projector) if '.tmp' in name]


def test_an_own_datasets_classes_name_everything(own_run, tmp_path, monkeypatch):
    run_dir = str(tmp_path / 'run')
    shutil.copytree(own_run[1], run_dir)  # the projector export goes into the run
    legends = []
    tsne_figure = explanation_plots.tsne_figure

    def recording_tsne_figure(panels, class_names):
        fig = tsne_figure(panels, class_names)
        legends.append([t.get_text() for t in fig.axes[-1].get_legend().get_texts()])
        return fig

    monkeypatch.setattr(explanation_plots, 'tsne_figure', recording_tsne_figure)
    out = tmp_path / 'explain'
    status = run_entry_point(explain, f'--model={run_dir}', f'--output={out}', '--clips=1')
    assert status == 0
    names = list(OWN_CLASS_NAMES)
    assert legends == [names]  # all 11 classes, in the run's order

    # One test clip per class, c<label>_2: the label column is that class's name.
    rows = read_tsv(
        os.path.join(explanation_plots.projector_dir(run_dir), 'features_test_metadata.tsv')
    )
    assert rows[0] == ['label', 'prediction', 'clip_id']
    assert sorted(r[2] for r in rows[1:]) == [f'c{c:02d}_2' for c in range(len(names))]
    for label, prediction, clip in rows[1:]:
        assert label == names[int(clip[1:3])]
        assert prediction in names

    # --clips=1: each class's one clip is drawn, in a folder named by its class.
    heatmaps = out / 'heatmaps'
    assert sorted(os.listdir(heatmaps)) == sorted([*names, 'index.csv'])
    for c, name in enumerate(names):
        assert os.listdir(heatmaps / name) == [f'c{c:02d}_2.png']
    with open(heatmaps / 'index.csv', newline='') as f:
        index = list(csv.DictReader(f))
    assert sorted(r['class'] for r in index) == sorted(names)
    assert all(r['predicted'] in names for r in index)


def test_compare_refuses_runs_of_other_class_names(own_run, tmp_path, capsys):
    run_dir, other = str(tmp_path / 'run'), str(tmp_path / 'other')
    shutil.copytree(own_run[1], run_dir)
    shutil.copytree(own_run[1], other)
    results = os.path.join(other, 'results.json')
    with open(results) as f:
        recorded = json.load(f)
    recorded['class_names'] = [f'other_{i}' for i in range(len(OWN_CLASS_NAMES))]
    with open(results, 'w') as f:
        json.dump(recorded, f)
    out = tmp_path / 'explain'
    status = run_entry_point(
        explain, f'--model={run_dir}', f'--compare={other}', f'--output={out}', '--clips=0'
    )
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert error[0].startswith(f'error: --compare={other}: its classes (other_0, ')
    assert f'those of {run_dir} (calm, amused, ' in error[0]
    assert os.listdir(out) == []  # refused before anything is written


@pytest.mark.parametrize('why', ['locked', 'read-only'])
def test_a_locked_or_read_only_output_is_refused_before_any_run_is_opened(
    tmp_path, monkeypatch, capsys, why
):
    def no_run(*args, **kwargs):
        raise AssertionError('a run was opened')

    monkeypatch.setattr(explain, 'open_run', no_run)
    out = tmp_path / 'explain'
    args = ('--model=runs/none', f'--output={out}')
    if why == 'read-only':
        read_only(monkeypatch, out)
        assert run_entry_point(explain, *args) == 1
        expected = f'error: {out}: cannot write to this explain --output folder (Read-only '
        expected += 'file system)'
    else:
        with live_lock(out, what='explain run') as pid:
            assert run_entry_point(explain, *args) == 1
        expected = f'error: {in_use_line(out, "explain run", pid)}'
    assert capsys.readouterr().err.strip().splitlines() == [expected]
