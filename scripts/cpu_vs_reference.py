"""Our train step against the authors' PyTorch one on the CPU, interleaved step by step, so
that a shared machine's drift hits both sides alike.

    PYTHONPATH=. python scripts/cpu_vs_reference.py --reference_dir=/path/to/Former-DFER

Each side runs in its own process (torch and jaxlib in one process slow the reference down:
measured 2x) and waits, idle, for the driver to ask for its next step.

16 x 112 x 112 clips, batch 4, float32 (docs/benchmarks.md's CPU comparison). After --warmup steps
of each, every pair times one step of each side (the order alternates from pair to pair)
with the 1-minute load average beside it; printed: one JSON line per pair, then a summary
line with the median clips/s of each side, the median of the per-pair speed ratios (ours /
reference) and the same for clips per CPU-second. Both sides use --threads threads (default:
every core; XLA:CPU always uses every core).

The reference code is not part of this project: clone
https://github.com/zengqunzhao/Former-DFER and pass its path (or set FORMER_DFER_REFERENCE);
it needs torch and einops.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from absl import app, flags

from former_dfer_jax import xla_flags


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ours_step(batch_size: int) -> Callable[[], None]:
    xla_flags.set_xla_flags()  # before JAX starts its backend
    import jax
    from flax import nnx

    from former_dfer_jax import benchmark, default_config
    from former_dfer_jax.models import build_model
    from former_dfer_jax.training import steps

    config = default_config.get_config()  # 16 x 112 x 112, float32
    schedule = steps.step_decay_schedule(config.optimizer, 100)
    tx = steps.make_optimizer(config.optimizer, schedule)
    state = steps.init_train_state(build_model(config.model, rngs=nnx.Rngs(config.seed)), tx)
    batch = benchmark.random_batch(config, batch_size, config.seed)
    jitted, args = benchmark.step_function(config, 'train', state, tx, schedule, batch)
    del state
    compiled = jitted.lower(*args).compile()
    carry = {'args': args}

    def step() -> None:
        new_state, metrics = compiled(*carry['args'])
        jax.block_until_ready(metrics)
        carry['args'] = (new_state, carry['args'][1])

    return step


def _reference_step(batch_size: int, reference_dir: str, threads: int) -> Callable[[], None]:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference_benchmark as reference

    torch.set_num_threads(threads)
    return reference.make_step(
        reference.load_model_class(reference_dir),
        what='train',
        batch_size=batch_size,
        precision='float32',
        device='cpu',
    )


def _worker(side: str) -> None:
    """Builds one side's step, says 'ready', then times one step per line read."""
    FLAGS = flags.FLAGS
    if side == 'ours':
        step = _ours_step(FLAGS.batch_size)
    else:
        step = _reference_step(FLAGS.batch_size, FLAGS.reference_dir, FLAGS.threads)
    print('ready', flush=True)
    for _ in sys.stdin:
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        print(json.dumps({'s': seconds, 'cpu_s': cpu_seconds}), flush=True)


def _driver() -> None:
    FLAGS = flags.FLAGS
    reference_dir = FLAGS.reference_dir or os.environ.get('FORMER_DFER_REFERENCE', '')
    if not reference_dir:
        raise app.UsageError('pass --reference_dir or set FORMER_DFER_REFERENCE')
    threads = FLAGS.threads or os.cpu_count()
    batch_size = FLAGS.batch_size
    common = [f'--batch_size={batch_size}', f'--threads={threads}']
    common.append(f'--reference_dir={reference_dir}')
    workers = {
        side: subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), f'--worker={side}', *common],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for side in ('ours', 'reference')
    }

    def ask(side: str) -> dict:
        worker = workers[side]
        worker.stdin.write('step\n')
        worker.stdin.flush()
        line = worker.stdout.readline()
        if not line:
            raise RuntimeError(f'the {side} worker exited (status {worker.wait()})')
        return json.loads(line)

    for side, worker in workers.items():
        if worker.stdout.readline().strip() != 'ready':
            raise RuntimeError(f'the {side} worker failed to start (status {worker.wait()})')
    for _ in range(FLAGS.warmup):
        for side in workers:
            ask(side)

    rows = []
    for pair in range(FLAGS.pairs):
        order = ('ours', 'reference') if pair % 2 == 0 else ('reference', 'ours')
        row = {'pair': pair, 'load_avg_1m': os.getloadavg()[0]}
        for side in order:
            timing = ask(side)
            row[f'{side}_s'], row[f'{side}_cpu_s'] = timing['s'], timing['cpu_s']
        row['ratio'] = row['reference_s'] / row['ours_s']
        row['cpu_ratio'] = row['reference_cpu_s'] / row['ours_cpu_s']
        print(json.dumps(row), flush=True)
        rows.append(row)
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()

    def median(key):
        return statistics.median(r[key] for r in rows)

    summary = {
        'summary': True,
        'cpu': _cpu_name(),
        'isa': xla_flags.cpu_isa(),
        'cpu_count': os.cpu_count(),
        'threads': threads,
        'batch_size': batch_size,
        'pairs': FLAGS.pairs,
        'warmup': FLAGS.warmup,
        'ours_clips_per_s': batch_size / median('ours_s'),
        'reference_clips_per_s': batch_size / median('reference_s'),
        'ratio_median': median('ratio'),
        'ratio_min': min(r['ratio'] for r in rows),
        'ratio_max': max(r['ratio'] for r in rows),
        'ours_clips_per_cpu_s': batch_size / median('ours_cpu_s'),
        'reference_clips_per_cpu_s': batch_size / median('reference_cpu_s'),
        'cpu_ratio_median': median('cpu_ratio'),
        'load_avg_1m': [round(r['load_avg_1m'], 2) for r in rows],
        'xla_flags': xla_flags.set_xla_flags(),  # what the ours worker ran with
    }
    print(json.dumps(summary), flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if flags.FLAGS.worker:
        _worker(flags.FLAGS.worker)
    else:
        _driver()


def _define_flags() -> None:
    flags.DEFINE_string('reference_dir', '', 'Clone of zengqunzhao/Former-DFER.')
    flags.DEFINE_integer('pairs', 10, 'Timed pairs (one step of each side).')
    flags.DEFINE_integer('warmup', 2, 'Untimed steps of each side first.')
    flags.DEFINE_integer('batch_size', 4, 'Clips per step.')
    flags.DEFINE_integer('threads', 0, 'torch threads (0: the CPU count).')
    flags.DEFINE_enum('worker', '', ['', 'ours', 'reference'], 'Internal: run one side.')


if __name__ == '__main__':
    _define_flags()
    app.run(main)
