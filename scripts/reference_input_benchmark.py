"""Throughput of the authors' train input (their VideoDataset, train transforms and a torch
DataLoader as main_DFEW.py builds it: batch 32, shuffle, pin_memory, drop_last), for
comparison with `python -m former_dfer_jax.benchmark --what=input`. One JSON line.

    python scripts/reference_input_benchmark.py --reference_dir=/path/to/Former-DFER \
        --root=/data/DFEW --fold=1 --num_workers=2 --batches=10 --warmup=2

--root is a dataset in DFEW's layout (Clip/clip_224x224/<clip>/<clip>_<t>.jpg and
EmoLabel_DataSplit/train(single-labeled)/set_<fold>.csv); the reference's annotation list
("<clip dir> <num_frames> <label 0..6>") is written from it to a temporary file. Batches
are drawn from fresh epochs as needed; the first --warmup batches (which include the
workers' start) are not timed.

The reference code is not part of this project: clone
https://github.com/zengqunzhao/Former-DFER and pass its path (or set FORMER_DFER_REFERENCE);
it needs torch, torchvision and PIL.
"""

from __future__ import annotations

import csv
import gc
import glob
import json
import os
import sys
import tempfile
import time

from absl import app, flags


def write_annotation(root: str, fold: int, path: str) -> int:
    """The reference's list file for DFEW-layout `root`'s train split of `fold`."""
    split = glob.glob(os.path.join(root, 'EmoLabel_DataSplit', 'train*', f'set_{fold}.csv'))
    if not split:
        raise app.UsageError(f'--root={root}: no EmoLabel_DataSplit/train*/set_{fold}.csv')
    clips = os.path.join(root, 'Clip', 'clip_224x224')
    lines = []
    with open(split[0]) as f:
        for row in csv.DictReader(f):
            directory = os.path.join(clips, f'{int(row["video_name"]):05d}')
            frames = len(glob.glob(os.path.join(directory, '*.jpg')))
            lines.append(f'{directory} {frames} {int(row["label"]) - 1}\n')
    with open(path, 'w') as f:
        f.writelines(lines)
    return len(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    FLAGS = flags.FLAGS
    reference_dir = FLAGS.reference_dir or os.environ.get('FORMER_DFER_REFERENCE', '')
    if not os.path.isfile(os.path.join(reference_dir, 'dataloader', 'dataset_DFEW.py')):
        raise app.UsageError(f'--reference_dir={reference_dir!r}: no dataloader/dataset_DFEW.py')
    sys.path.insert(0, os.path.abspath(reference_dir))
    import torch
    import torchvision
    from dataloader import dataset_DFEW as reference  # the reference's own module
    from dataloader.video_transform import (
        GroupRandomHorizontalFlip,
        GroupRandomSizedCrop,
        Stack,
        ToTorchFormatTensor,
    )

    torch.set_num_threads(1)  # as in a DataLoader worker; the main process only collates
    with tempfile.TemporaryDirectory() as tmp:
        list_file = os.path.join(tmp, 'train.txt')
        num_clips = write_annotation(FLAGS.root, FLAGS.fold, list_file)
        transform = torchvision.transforms.Compose(
            [GroupRandomSizedCrop(112), GroupRandomHorizontalFlip(), Stack(), ToTorchFormatTensor()]
        )
        dataset = reference.VideoDataset(
            list_file=list_file,
            num_segments=8,
            duration=2,
            mode='train',
            transform=transform,
            image_size=112,
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=FLAGS.batch_size,
            shuffle=True,
            num_workers=FLAGS.num_workers,
            pin_memory=True,
            drop_last=True,
        )

        def batches():
            while True:
                yield from loader

        stream = batches()
        clips = 0
        children, first_cpu = os.times(), time.process_time()
        start = time.perf_counter()
        for step in range(FLAGS.warmup + FLAGS.batches):
            if step == FLAGS.warmup:
                clips, start = 0, time.perf_counter()
            video, _ = next(stream)
            clips += len(video)
        seconds = time.perf_counter() - start
        stream.close()  # shuts the workers down: their CPU time counts once they exit
        del stream
        gc.collect()
        end = os.times()
    # CPU seconds of the main process and the workers over the whole run (warm-up included:
    # the workers' time cannot be split), per clip delivered over that run.
    all_clips = (FLAGS.warmup + FLAGS.batches) * FLAGS.batch_size
    cpu_seconds = (time.process_time() - first_cpu) + (
        (end.children_user + end.children_system)
        - (children.children_user + children.children_system)
    )
    print(
        json.dumps(
            {
                'what': 'input',
                'model': 'reference-pytorch',
                'clips_per_s': clips / seconds,
                'batch_size': FLAGS.batch_size,
                'num_batches': FLAGS.batches,
                'warmup_batches': FLAGS.warmup,
                'num_workers': FLAGS.num_workers,
                'train_clips': num_clips,
                'seconds': seconds,
                'cpu_seconds_whole_run': cpu_seconds,
                'clips_per_cpu_s': all_clips / cpu_seconds,
                'load_avg_1m': os.getloadavg()[0],
                'cpu_count': os.cpu_count(),
            }
        ),
        flush=True,
    )


def _define_flags() -> None:
    flags.DEFINE_string('reference_dir', '', 'Clone of zengqunzhao/Former-DFER.')
    flags.DEFINE_string('root', None, 'Dataset in DFEW layout.', required=True)
    flags.DEFINE_integer('fold', 1, 'DFEW fold (1..5).')
    flags.DEFINE_integer('batch_size', 32, 'Clips per batch.')
    flags.DEFINE_integer('num_workers', 2, 'DataLoader workers.')
    flags.DEFINE_integer('batches', 10, 'Timed batches.')
    flags.DEFINE_integer('warmup', 2, 'Untimed batches first.')


if __name__ == '__main__':
    _define_flags()
    app.run(main)
