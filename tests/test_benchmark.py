"""The benchmark CLI prints one JSON line per setting with positive timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from former_dfer_jax import benchmark, default_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    'data.image_size': 32,
    'data.num_segments': 2,
    'data.segment_length': 2,
    'model.spatial.depth': 1,
    'model.temporal.depth': 1,
}
KEYS = (
    'clips_per_s',
    'clips_per_cpu_s',
    'step_s_median',
    'step_s_min',
    'step_s_max',
    'step_s_p10',
    'step_s_p90',
    'compile_s',
    'step_gflops',
    'achieved_gflops_per_s',
)


def tiny_config():
    config = default_config.get_config()
    for key, value in TINY.items():
        node = config
        *parents, leaf = key.split('.')
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def check_result(result: dict, what: str, batch_size: int) -> None:
    assert result['what'] == what and result['batch_size'] == batch_size
    assert (result['image_size'], result['num_frames']) == (32, 4)
    for key in KEYS:
        assert result[key] > 0, key
    assert result['step_s_min'] <= result['step_s_median'] <= result['step_s_max']
    memory = result.get('peak_host_rss_bytes') or result.get('peak_device_bytes')
    assert memory > 0
    assert 'mfu' in result  # None where the device's peak is unknown (CPUs)


@pytest.mark.parametrize(('what', 'batch_sizes'), [('train', [2]), ('eval', [2, 3])])
def test_run_prints_one_json_line_per_batch_size(what, batch_sizes, capsys):
    results = benchmark.run(tiny_config(), what, batch_sizes, steps_timed=2, warmup=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line) for line in lines] == results
    for result, batch_size in zip(results, batch_sizes, strict=True):
        check_result(result, what, batch_size)


def test_cli():
    overrides = [f'--config.{key}={value}' for key, value in TINY.items()]
    command = [sys.executable, '-m', 'former_dfer_jax.benchmark', '--what=train']
    command += ['--config=configs/dfew.py', *overrides, '--batch_size=2', '--steps=1']
    command += ['--warmup=0']
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith('{')]
    assert len(lines) == 1
    result = json.loads(lines[0])
    check_result(result, 'train', 2)
    assert result['platform'] != 'cpu' or result['mfu'] is None


def test_parse_batch_sizes():
    assert benchmark.parse_batch_sizes(['4', '8,16']) == [4, 8, 16]
    assert benchmark.parse_batch_sizes(None) == [None]
    with pytest.raises(ValueError):
        benchmark.parse_batch_sizes(['0'])


def test_predict_mode_forwards_the_detection_setting_and_prints_one_line(monkeypatch, capsys):
    calls = []

    def fake_benchmark_predict(config, **options):
        calls.append(options)
        return {'what': 'predict', 'frames_per_s': {'end_to_end': 1.0}}

    monkeypatch.setattr(benchmark, 'benchmark_predict', fake_benchmark_predict)
    results = benchmark.run(
        tiny_config(), 'predict', [None], 0, 0, {'detect_every': 3, 'max_side': 0}
    )
    assert calls == [{'detect_every': 3}]  # 0 = benchmark_predict's own default
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == results


def test_predict_times_every_stage_of_a_generated_video():
    result = benchmark.benchmark_predict(tiny_config(), seconds=1.0, compare_every_frame=False)
    assert result['face_frames'] == 30  # the generated face is found in every frame
    assert set(result['frames_per_s']) == {'decode', 'detect', 'align', 'model', 'end_to_end'}
    assert all(rate > 0 for rate in result['frames_per_s'].values())
    assert (result['detect_every'], result['max_side']) == (5, 320)  # predict's defaults


def test_iou_stats_count_the_frames_where_only_one_side_has_a_face():
    face = {'box': [0.0, 0.0, 10.0, 10.0]}
    frames = [{'face': face}, {'face': face}, {'face': None}, {'face': None}]
    boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [1.0, 1.0, 2.0, 2.0], None]
    stats = benchmark.iou_stats(frames, boxes)
    assert stats == {'frames': 2, 'only_one_has_a_face': 1, 'mean': 0.75, 'p10': 0.55, 'min': 0.5}
