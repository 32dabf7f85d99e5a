"""Input pipeline throughput: how fast the train pipeline delivers clips.

Times the whole train path (record read, frame sampling, JPEG decode of the sampled
frames, crop / flip / resize, batching, conversion to numpy) with nothing consuming
the batches, i.e. the most the input can feed a trainer on this machine.
"""

import os
import time

import ml_collections

from former_dfer_jax.data import pipeline
from former_dfer_jax.data.prepare import prepare


def benchmark_input(config: ml_collections.ConfigDict, *, num_batches: int, warmup: int) -> dict:
    """Clips/s of the train pipeline over `num_batches` batches after `warmup` batches.

    Runs as many epochs as needed (each a fresh `load` call, as training does). The batch
    is this process's share of config.batch_size.
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
    return {
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
    }
