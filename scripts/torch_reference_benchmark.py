"""Throughput of the authors' PyTorch Former-DFER, for comparison with ours: one JSON line
per setting, with the keys `python -m former_dfer_jax.benchmark` uses where they mean the
same thing.

    python scripts/torch_reference_benchmark.py --reference_dir=/path/to/Former-DFER \
        --what=train --batch_size=4 --precision=float32 --device=cpu --threads=2

The reference code is not part of this project: clone https://github.com/zengqunzhao/Former-DFER
(MIT licence) anywhere and pass its path (or set FORMER_DFER_REFERENCE). It needs torch and
einops (a pure-Python wheel). The train step is the body of the reference's training loop:
forward, nn.CrossEntropyLoss, zero_grad, backward, SGD (momentum 0.9, weight decay 1e-4);
eval is the forward under torch.no_grad() in eval mode. Each timed step waits for its
result (torch.cuda.synchronize on GPUs).

--precision: float32; autocast (torch.autocast in bfloat16, the usual choice on H100-class
GPUs); autocast_fp16 (float16 autocast with a GradScaler, the reference era's AMP recipe).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

from absl import app, flags

NUM_FRAMES, IMAGE_SIZE = 16, 112
PRECISIONS = ('float32', 'autocast', 'autocast_fp16')


def load_model_class(reference_dir: str):
    if not os.path.isfile(os.path.join(reference_dir, 'models', 'ST_Former.py')):
        raise app.UsageError(
            f'--reference_dir={reference_dir!r}: no models/ST_Former.py there; clone '
            'https://github.com/zengqunzhao/Former-DFER and pass its path'
        )
    sys.path.insert(0, os.path.abspath(reference_dir))
    from models.ST_Former import GenerateModel  # the reference's own module

    return GenerateModel


def make_step(
    model_class, *, what: str, batch_size: int, precision: str, device: str, seed: int = 0
) -> Callable[[], None]:
    """A function running one train (or eval) step of the reference on random clips and
    waiting for it."""
    import torch

    torch.manual_seed(seed)
    model = model_class().to(device)
    # The reference's shapes are fixed: 16 frames (T-Former) of 112 x 112 (S-Former).
    video = torch.rand(batch_size, NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    label = torch.randint(0, 7, (batch_size,), device=device)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, weight_decay=1e-4)
    autocast_dtype = {'autocast': torch.bfloat16, 'autocast_fp16': torch.float16}.get(precision)
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    scaler = torch.amp.GradScaler(device_type) if precision == 'autocast_fp16' else None

    def autocast():
        return torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def sync():
        if device_type == 'cuda':
            torch.cuda.synchronize()

    def train_step():
        with autocast():
            loss = criterion(model(video), label)
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        loss.item()  # waits for the step, as the reference's logging does
        sync()

    @torch.no_grad()
    def eval_step():
        with autocast():
            model(video).float().argmax(-1).sum().item()
        sync()

    model.train(what == 'train')
    return train_step if what == 'train' else eval_step


def benchmark(
    model_class,
    *,
    what: str,
    batch_size: int,
    precision: str,
    device: str,
    steps: int,
    warmup: int,
    seed: int = 0,
) -> dict:
    """Times `steps` reference steps after `warmup` ones: one JSON-able dict."""
    import torch

    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    step = make_step(
        model_class,
        what=what,
        batch_size=batch_size,
        precision=precision,
        device=device,
        seed=seed,
    )
    if device_type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    times = []
    cpu_start = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    cpu_s = time.process_time() - cpu_start
    median = statistics.median(times)
    result = {
        'what': what,
        'model': 'reference-pytorch',
        'batch_size': batch_size,
        'num_frames': NUM_FRAMES,
        'image_size': IMAGE_SIZE,
        'precision': precision,
        'clips_per_s': batch_size / median,
        'clips_per_cpu_s': batch_size * steps / cpu_s if cpu_s > 0 else None,
        'step_s_median': median,
        'step_s_min': min(times),
        'step_s_max': max(times),
        'steps': steps,
        'warmup': warmup,
        'device': torch.cuda.get_device_name() if device_type == 'cuda' else 'cpu',
        'threads': torch.get_num_threads(),
        'cudnn_allow_tf32': torch.backends.cudnn.allow_tf32,
        'matmul_allow_tf32': torch.backends.cuda.matmul.allow_tf32,
        'load_avg_1m': os.getloadavg()[0],
        'torch_version': torch.__version__,
    }
    if device_type == 'cuda':
        result['peak_device_bytes'] = torch.cuda.max_memory_allocated()
    else:
        result['peak_host_rss_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    FLAGS = flags.FLAGS
    import torch

    reference_dir = FLAGS.reference_dir or os.environ.get('FORMER_DFER_REFERENCE', '')
    if not reference_dir:
        raise app.UsageError('pass --reference_dir or set FORMER_DFER_REFERENCE')
    model_class = load_model_class(reference_dir)
    device = FLAGS.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if FLAGS.threads > 0:
        torch.set_num_threads(FLAGS.threads)
    for precision in FLAGS.precision:
        if precision not in PRECISIONS:
            raise app.UsageError(f'--precision={precision}: expected one of {PRECISIONS}')
        for batch_size in (int(b) for b in FLAGS.batch_size):
            result = benchmark(
                model_class,
                what=FLAGS.what,
                batch_size=batch_size,
                precision=precision,
                device=device,
                steps=FLAGS.steps,
                warmup=FLAGS.warmup,
            )
            print(json.dumps(result), flush=True)


def _define_flags() -> None:
    flags.DEFINE_string('reference_dir', '', 'Clone of zengqunzhao/Former-DFER.')
    flags.DEFINE_enum('what', 'train', ('train', 'eval'), 'What to time.')
    flags.DEFINE_list('batch_size', ['32'], 'Batch sizes (comma list).')
    flags.DEFINE_list('precision', ['float32'], f'Comma list of {PRECISIONS}.')
    flags.DEFINE_string('device', 'auto', 'auto (cuda if available), cpu or cuda[:i].')
    flags.DEFINE_integer('threads', 0, 'torch.set_num_threads (0: torch default).')
    flags.DEFINE_integer('steps', 10, 'Timed steps.')
    flags.DEFINE_integer('warmup', 2, 'Untimed steps first.')


if __name__ == '__main__':
    _define_flags()
    app.run(main)
