"""Input pipeline throughput: how fast the train pipeline delivers clips, and how close
that is to the limit of a JPEG pipeline, decoding the sampled frames alone.

`benchmark_input` times the whole train path (record read, frame sampling, JPEG decode of
the sampled frames, crop / flip / resize, batching, conversion to numpy) with nothing
consuming the batches, i.e. the most the input can feed a trainer on this machine.
`decode_rate` times only the decode of the same clips' sampled frames (held in memory, with
the pipeline's decoder and parallelism): the physical limit the pipeline is measured
against.
"""

import os
import time

import ml_collections
import numpy as np
import tensorflow as tf

from former_dfer_jax.data import pipeline, records
from former_dfer_jax.data.cache import prepare
from former_dfer_jax.data.frames import DCT_METHOD


def benchmark_input(
    config: ml_collections.ConfigDict, *, num_batches: int, warmup: int, decode: bool = True
) -> dict:
    """Clips/s of the train pipeline over `num_batches` batches after `warmup` batches.

    Runs as many epochs as needed (each a fresh `load` call, as training does). The batch
    is this process's share of config.batch_size. With `decode`, also the decode limit of
    the first epoch's clips (`decode_rate`) and the pipeline's fraction of it.
    """
    if num_batches < 1 or warmup < 0:
        raise ValueError('need num_batches >= 1 and warmup >= 0')
    prepared = prepare(config)
    info = pipeline.info(config)
    if info.steps_per_epoch < 1:
        raise ValueError(
            f'{info.num_clips["train"]} train clips make no batch of {info.batch_size}'
        )

    def batches():
        epoch = 0
        while True:
            yield from pipeline.load(config, 'train', epoch=epoch)
            epoch += 1

    stream = batches()
    clips = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(warmup + num_batches):
        if step == warmup:
            clips, start, cpu_start = 0, time.perf_counter(), time.process_time()
        clips += len(next(stream)['label'])
    seconds = time.perf_counter() - start
    # CPU seconds of all of this process's threads: comparable when the machine is shared.
    cpu_seconds = time.process_time() - cpu_start
    result = {
        'what': 'input',
        'dataset': prepared.name,
        'clips_per_s': clips / seconds,
        'frames_per_s': clips * info.num_frames / seconds,
        'batches_per_s': num_batches / seconds,
        'batch_size': clips // num_batches,
        'num_batches': num_batches,
        'warmup_batches': warmup,
        'seconds': seconds,
        'cpu_seconds': cpu_seconds,
        'clips_per_cpu_s': clips / cpu_seconds,
        'num_frames': info.num_frames,
        'image_size': info.image_size,
        'stored_frame_size': int(config.data.stored_frame_size),
        'num_parallel_calls': int(config.data.num_parallel_calls),
        'cpu_count': os.cpu_count(),
        'load_avg_1m': os.getloadavg()[0],
    }
    if decode:
        num_clips = min(info.num_clips['train'], (warmup + num_batches) * info.batch_size)
        limit = decode_rate(config, num_clips=num_clips)
        result.update(limit)
        result['fraction_of_decode_limit'] = result['clips_per_s'] / limit['decode_clips_per_s']
    return result


def sampled_frames(config: ml_collections.ConfigDict, num_clips: int) -> dict[str, np.ndarray]:
    """The encoded sampled frames [n, T] (bytes) and crop windows [n, 4] of the first
    `num_clips` train clips of epoch 0, in the pipeline's order, read as the pipeline does."""
    prepared = prepare(config)
    indices = pipeline.split_indices(prepared, config)['train']
    order, _ = pipeline.global_order(
        indices, train=True, global_batch=1, seed=int(config.seed), epoch=0
    )
    ids = order.reshape(-1)[:num_clips]
    plans = pipeline.clip_plans(prepared, config, ids, train=True, epoch=0)
    features = prepared.features

    def parse(frames, serialized):
        return tf.gather(features.deserialize_example(serialized)['frames'], frames)

    serialized = records.read_records(prepared.index, ids, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(plans['frames']), serialized)
    encoded = np.stack(list(dataset.map(parse).as_numpy_iterator()))
    return {'encoded': encoded, 'windows': plans['windows']}


def decode_rate(config: ml_collections.ConfigDict, *, num_clips: int, repeats: int = 2) -> dict:
    """Clips/s of decoding the sampled frames of `num_clips` train clips alone: whole frames
    (tf.io.decode_jpeg) and, as the train pipeline decodes them, only each clip's crop window
    (tf.io.decode_and_crop_jpeg); the pipeline's DCT method and parallelism, frames from
    memory, best of `repeats` passes."""
    frames = sampled_frames(config, num_clips)
    encoded, windows = frames['encoded'], frames['windows']
    num_frames = encoded.shape[1]
    parallel = (
        tf.data.AUTOTUNE
        if int(config.data.num_parallel_calls) < 0
        else int(config.data.num_parallel_calls)
    )
    flat = tf.constant(encoded.reshape(-1))
    flat_windows = tf.constant(np.repeat(windows, num_frames, axis=0))

    def whole(data, window):
        del window
        return tf.shape(tf.io.decode_jpeg(data, channels=3, dct_method=DCT_METHOD))

    def crop(data, window):
        image = tf.io.decode_and_crop_jpeg(data, window, channels=3, dct_method=DCT_METHOD)
        return tf.shape(image)

    result = {'decode_clips': len(encoded)}
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1  # as the pipeline
    for name, fn in (('decode', whole), ('decode_crop', crop)):
        dataset = tf.data.Dataset.from_tensor_slices((flat, flat_windows))
        dataset = dataset.map(fn, num_parallel_calls=parallel).batch(256).with_options(options)
        best = None
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in dataset:
                pass
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        result[f'{name}_clips_per_s'] = len(encoded) / best
    return result
