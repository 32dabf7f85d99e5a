"""Throughput of the train step, the eval step or the input pipeline, one JSON line each.

    python -m former_dfer_jax.benchmark --what=train --config=configs/dfew.py \
        --config.data.image_size=48 --batch_size=8 --steps=10 --warmup=2
    python -m former_dfer_jax.benchmark --what=eval --config=configs/dfew.py --batch_size=32,64
    python -m former_dfer_jax.benchmark --what=input --config=configs/dfew.py \
        --config.data.root=/data/DFEW
    python -m former_dfer_jax.benchmark --what=predict --config=configs/dfew.py \
        [--detect_every=5 --max_side=320]

`train` and `eval` time the jitted `steps.train_step` / `steps.eval_step` (as training
runs them: the train state donated) on random clips of the config's shapes, so they need
no dataset. Each timed step waits for its result. Reported per setting: clips/s, the step
time (median, min, max, 10th / 90th percentiles), compile time, clips per CPU-second
(comparable when other jobs share the machine), peak memory (host RSS on CPU, the device's
peak bytes in use on GPUs), XLA's FLOP count of the step and the GFLOP/s it achieves, and
the model FLOP utilisation where the device's peak is known. `input` wraps
`former_dfer_jax.data.benchmark.benchmark_input` (it needs the dataset). `predict` times
`benchmark_predict`: end-to-end frames/s of each stage of `inference.predictor.Predictor` on
a generated 640 x 360, 30 fps video of a real face, and the box IoU of the chosen detection
setting against detecting every frame at full size (it imports TensorFlow for MTCNN).
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from former_dfer_jax import cli, files
from former_dfer_jax.errors import UserError
from former_dfer_jax.models import build_model
from former_dfer_jax.models.complexity import compiled_flops
from former_dfer_jax.training import config_checks, steps

WHATS = ('train', 'eval', 'input', 'predict')

# Dense peak TFLOP/s by device kind (prefix match): (bfloat16 tensor core, float32 non-tensor).
# Float32 matmuls on these GPUs may run as TF32 under JAX's default precision, so a float32
# utilisation against the plain float32 peak can exceed 1; it is reported as measured.
PEAK_TFLOPS = {
    'NVIDIA H100 80GB HBM3': (989.0, 67.0),  # SXM
    'NVIDIA H100 PCIe': (756.0, 51.0),
    'NVIDIA H100': (989.0, 67.0),
    'NVIDIA H200': (989.0, 67.0),
}


def peak_flops(device: jax.Device, compute_dtype: str) -> float | None:
    """The device's dense peak FLOP/s for the compute dtype, or None where unknown (CPUs)."""
    kind = getattr(device, 'device_kind', '')
    for prefix in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if kind.startswith(prefix):
            bf16, fp32 = PEAK_TFLOPS[prefix]
            return (bf16 if compute_dtype == 'bfloat16' else fp32) * 1e12
    return None


def _peak_memory(device: jax.Device) -> dict[str, Any]:
    if device.platform == 'cpu':
        # ru_maxrss is in KiB on Linux: the process's peak, compilation included.
        return {'peak_host_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    stats = device.memory_stats() or {}
    return {'peak_device_bytes': stats.get('peak_bytes_in_use')}


def random_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int) -> dict:
    """Random clips of the config's shapes: video, label and mask (all True)."""
    model = config.model
    shape = (batch_size, model.num_frames, model.image_size, model.image_size, 3)
    rng = np.random.default_rng(seed)
    return {
        'video': jnp.asarray(rng.random(shape, np.float32)),
        'label': jnp.asarray(rng.integers(0, model.num_classes, batch_size), jnp.int32),
        'mask': jnp.ones((batch_size,), bool),
    }


def step_function(
    config: ml_collections.ConfigDict,
    what: str,
    state: steps.TrainState,
    tx: optax.GradientTransformation,
    schedule: steps.LearningRateSchedule,
    batch: dict,
) -> tuple[Callable, tuple]:
    """(jitted step, its arguments): `steps.train_step` with the state donated, as
    training runs it, or `steps.eval_step` on the state's eval graph."""
    if what == 'train':
        batch = {k: v for k, v in batch.items() if k != 'mask'}
        jitted = jax.jit(
            functools.partial(steps.train_step, tx=tx, schedule=schedule), donate_argnums=0
        )
        return jitted, (state, batch)
    jitted = jax.jit(
        functools.partial(
            steps.eval_step, graphdef=state.eval_graphdef, num_classes=config.model.num_classes
        )
    )
    return jitted, (state.params, state.rest, batch)


def _compiled_memory(compiled) -> dict[str, Any]:
    """Bytes the compiled step needs on its device (arguments + outputs + temporaries, less
    donated aliases): per setting, where the process peak only grows."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return {'step_memory_bytes': None}
    if stats is None:
        return {'step_memory_bytes': None}
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return {'step_memory_bytes': int(total), 'step_temp_bytes': int(stats.temp_size_in_bytes)}


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def benchmark_step(
    config: ml_collections.ConfigDict,
    *,
    what: str = 'train',
    batch_size: int | None = None,
    steps_timed: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Times `steps_timed` calls of the jitted train or eval step after `warmup` calls.

    The batch is random clips of the config's shapes; `batch_size` defaults to
    config.batch_size (train) or config.eval_batch_size (eval). Runs on the default device.
    """
    if what not in ('train', 'eval'):
        raise ValueError(f'what={what!r}: expected train or eval')
    if steps_timed < 1 or warmup < 0:
        raise ValueError('need steps >= 1 and warmup >= 0')
    if batch_size is None:
        batch_size = config.batch_size if what == 'train' else config.eval_batch_size
    device = jax.devices()[0]
    model = build_model(config.model, rngs=nnx.Rngs(config.seed))
    schedule = steps.step_decay_schedule(config.optimizer, 100)
    tx = steps.make_optimizer(config.optimizer, schedule)
    state = steps.init_train_state(model, tx)
    del model
    batch = random_batch(config, batch_size, config.seed)
    jitted, args = step_function(config, what, state, tx, schedule, batch)

    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - start
    step_flops = compiled_flops(compiled)

    def run(args):
        if what == 'train':
            new_state, metrics = compiled(*args)
            jax.block_until_ready(metrics)
            return (new_state, args[1])
        jax.block_until_ready(compiled(*args))
        return args

    for _ in range(warmup):
        args = run(args)
    times = []
    cpu_start = time.process_time()
    for _ in range(steps_timed):
        start = time.perf_counter()
        args = run(args)
        times.append(time.perf_counter() - start)
    cpu_s = time.process_time() - cpu_start
    wall_s = sum(times)
    median = statistics.median(times)
    clips = batch_size * steps_timed
    peak = peak_flops(device, config.model.compute_dtype)
    achieved = step_flops / median if step_flops else None
    return {
        'what': what,
        'batch_size': batch_size,
        'num_frames': int(config.model.num_frames),
        'image_size': int(config.model.image_size),
        'compute_dtype': config.model.compute_dtype,
        'clips_per_s': batch_size / median,
        'clips_per_cpu_s': clips / cpu_s if cpu_s > 0 else None,
        'step_s_median': median,
        'step_s_min': min(times),
        'step_s_max': max(times),
        'step_s_p10': _percentile(times, 10),
        'step_s_p90': _percentile(times, 90),
        'steps': steps_timed,
        'warmup': warmup,
        'wall_s': wall_s,
        'cpu_s': cpu_s,
        'compile_s': compile_s,
        'step_gflops': step_flops / 1e9 if step_flops else None,
        'achieved_gflops_per_s': achieved / 1e9 if achieved else None,
        'peak_gflops_per_s': peak / 1e9 if peak else None,
        'mfu': achieved / peak if achieved and peak else None,
        **_peak_memory(device),
        **_compiled_memory(compiled),
        'device': getattr(device, 'device_kind', device.platform),
        'platform': device.platform,
        'num_devices': jax.device_count(),
        'cpu_count': os.cpu_count(),
        'load_avg_1m': os.getloadavg()[0],
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'jax_version': jax.__version__,
    }


def benchmark_input(
    config: ml_collections.ConfigDict, *, batch_size: int | None, steps_timed: int, warmup: int
) -> dict[str, Any]:
    from former_dfer_jax.data import benchmark as data_benchmark

    if batch_size is not None:
        config.batch_size = batch_size
    return data_benchmark.benchmark_input(config, num_batches=steps_timed, warmup=warmup)


def synthetic_face_video(
    path: str, *, seconds: float = 10.0, fps: int = 30, size: tuple[int, int] = (640, 360)
) -> None:
    """Writes an H.264 video of a real face (scikit-image's astronaut, a 128-pixel patch)
    moving over a textured canvas along a Lissajous path of period 10 s (up to ~5 pixels
    a frame at 30 fps)."""
    import av
    from PIL import Image

    try:
        from skimage import data as skimage_data
    except ImportError as e:
        raise UserError(
            "the predict benchmark draws scikit-image's astronaut: pip install "
            'scikit-image (see requirements-dev.txt)'
        ) from e
    face = Image.fromarray(skimage_data.astronaut()[20:220, 130:330]).resize((128, 128))
    w, h = size
    rng = np.random.default_rng(0)
    canvas = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
    background = Image.fromarray(canvas).resize((w, h), Image.Resampling.BILINEAR)
    n, period = round(seconds * fps), 10.0 * fps
    with files.atomic_path(path) as tmp, av.open(tmp, 'w') as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
        for i in range(n):
            phase = 2 * math.pi * i / period
            x = int((w - 128) * (0.5 + 0.4 * math.sin(phase)))
            y = int((h - 128) * (0.5 + 0.4 * math.sin(2 * phase)))
            image = background.copy()
            image.paste(face, (x, y))
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def benchmark_predict(
    config: ml_collections.ConfigDict | None = None,
    *,
    seconds: float = 10.0,
    detect_every: int | None = None,
    max_side: int | None = None,
    window_s: float | None = None,
    stride_s: float | None = None,
    batch_size: int | None = None,
    compare_every_frame: bool = True,
) -> dict[str, Any]:
    """Times `Predictor.predict` end to end on a generated 640 x 360, 30 fps H.264 video
    of `seconds` with the model of `config` (default: `default_config`, the reference's
    Former-DFER at 112 x 112, random weights); frames/s per stage. The detection, window
    and batch settings default to predict's (`inference.predictor.DEFAULT_*`).

    A first, untimed run on a 1 s clip compiles the model and builds MTCNN. Reported:
    frames/s of each stage (decoded frames over that stage's seconds) and end to end,
    and the process CPU seconds (on a shared machine, wall time depends on the others'
    load; CPU time much less). With `compare_every_frame`, the boxes are compared (IoU)
    with MTCNN run on every frame at full resolution: the accuracy given up for speed.
    """
    from former_dfer_jax.inference import predictor as predicting
    from former_dfer_jax.video import detect, faces

    if config is None:
        from former_dfer_jax import default_config

        config = default_config.get_config()
    detect_every = detect_every or predicting.DEFAULT_DETECT_EVERY
    max_side = max_side or predicting.DEFAULT_MAX_SIDE
    model = build_model(config.model, rngs=nnx.Rngs(0))
    model.eval()
    predictor = predicting.Predictor(
        model,
        sampling=(int(config.data.num_segments), int(config.data.segment_length)),
        window_s=window_s or predicting.DEFAULT_WINDOW_S,
        stride_s=stride_s or predicting.DEFAULT_STRIDE_S,
        batch_size=batch_size or predicting.DEFAULT_BATCH_SIZE,
        face_options=faces.FaceOptions(detect_every=detect_every, max_side=max_side),
    )
    with tempfile.TemporaryDirectory() as tmp:
        warm, video = os.path.join(tmp, 'warm.mp4'), os.path.join(tmp, 'video.mp4')
        synthetic_face_video(warm, seconds=1.0)
        synthetic_face_video(video, seconds=seconds)
        predictor.predict(warm)
        cpu = time.process_time()
        prediction = predictor.predict(video)
        cpu = time.process_time() - cpu
        reference = None
        if compare_every_frame:
            reference = faces.extract_face_video(
                video,
                faces.FaceOptions(detect_every=1, max_side=10_000),
                detector=detect.MtcnnDetector(max_side=10_000),
            ).frames
    timings = prediction.timings
    n = prediction.result['num_frames']
    rates = {k: round(n / s, 1) if s > 0 else float('inf') for k, s in timings.items()}
    rates['end_to_end'] = rates.pop('total')
    out: dict[str, Any] = {
        'what': 'predict',
        'video': f'640x360, 30 fps, {seconds:g} s ({n} frames), H.264',
        'detect_every': detect_every,
        'max_side': max_side,
        'windows': len(prediction.result['windows']),
        'face_frames': sum(f['face'] is not None for f in prediction.result['frames']),
        'cpu_count': os.cpu_count(),
        'frames_per_s': rates,
        'seconds': {k: round(v, 3) for k, v in timings.items()},
        'cpu_seconds': round(cpu, 3),
        'frames_per_cpu_s': round(n / cpu, 1),
    }
    if reference is not None:
        boxes = [None if f['face'] is None else f['face']['box'] for f in reference]
        out['iou_vs_every_frame_full_size'] = iou_stats(prediction.result['frames'], boxes)
    return out


def iou_stats(frames: Sequence[dict], boxes: Sequence[Sequence[float] | None]) -> dict[str, Any]:
    """IoU of each frame's box with a reference box, over the frames where both exist;
    frames where only one of the two has a face are counted apart."""
    from former_dfer_jax.video import track

    pairs = [
        (None if f['face'] is None else f['face']['box'], b)
        for f, b in zip(frames, boxes, strict=True)
    ]
    values = np.array([track.iou(a, b) for a, b in pairs if a is not None and b is not None])
    out: dict[str, Any] = {
        'frames': len(values),
        'only_one_has_a_face': sum((a is None) != (b is None) for a, b in pairs),
    }
    if len(values):
        out.update(
            mean=round(float(values.mean()), 4),
            p10=round(float(np.percentile(values, 10)), 4),
            min=round(float(values.min()), 4),
        )
    return out


def parse_batch_sizes(values: Sequence[str] | None) -> list[int | None]:
    """['4', '8,16'] -> [4, 8, 16]; none given -> [None] (the config's batch size)."""
    sizes: list[int | None] = []
    for value in values or ():
        for part in str(value).split(','):
            if part.strip():
                size = int(part)
                if size < 1:
                    raise ValueError(f'batch size {size}: expected >= 1')
                sizes.append(size)
    return sizes or [None]


def run(
    config: ml_collections.ConfigDict,
    what: str,
    batch_sizes: Sequence[int | None],
    steps_timed: int,
    warmup: int,
    predict_options: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One result per batch size, each printed as a JSON line as soon as it is measured
    (`predict`: one result; `predict_options` are `benchmark_predict` keywords, 0 = its
    default)."""
    if what not in WHATS:
        raise ValueError(f'what={what!r}: expected one of {WHATS}')
    results = []
    if what == 'predict':
        overrides = {k: v for k, v in (predict_options or {}).items() if v}
        result = benchmark_predict(config, **overrides)
        print(json.dumps(result), flush=True)
        return [result]
    for batch_size in batch_sizes:
        if what == 'input':
            result = benchmark_input(
                config, batch_size=batch_size, steps_timed=steps_timed, warmup=warmup
            )
        else:
            result = benchmark_step(
                config, what=what, batch_size=batch_size, steps_timed=steps_timed, warmup=warmup
            )
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    FLAGS = flags.FLAGS
    config_checks.validate(FLAGS.config)
    cli.setup()
    predict_options = {'detect_every': FLAGS.detect_every, 'max_side': FLAGS.max_side}
    run(
        FLAGS.config,
        FLAGS.what,
        parse_batch_sizes(FLAGS.batch_size),
        FLAGS.steps,
        FLAGS.warmup,
        predict_options,
    )


def _define_flags() -> None:
    cli.define_config_flags()
    flags.DEFINE_enum('what', 'train', WHATS, 'What to time.')
    flags.DEFINE_multi_string(
        'batch_size', None, 'Batch size(s): repeat the flag or give a comma list.'
    )
    flags.DEFINE_integer('steps', 10, 'Timed steps (input: timed batches).')
    flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
    flags.DEFINE_integer('detect_every', 0, 'predict: detect every k-th frame (0: the default).')
    flags.DEFINE_integer('max_side', 0, 'predict: detect on copies at most this wide (0: default).')


def entry_point() -> None:
    """The `former-dfer-benchmark` command (also `python -m former_dfer_jax.benchmark`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
