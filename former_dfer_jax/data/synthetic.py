"""Writes the synthetic dataset (`data.synthetic_dataset`, DFEW's layout) into a folder.

    python -m former_dfer_jax.data.synthetic --output=/tmp/synthetic_dfew \\
        [--num_clips=700 --image_size=48 --seed=0 --min_frames=12 --max_frames=48 \\
         --imbalance --difficulty=1.0 --num_workers=0]
"""

import time

from absl import app, flags

from former_dfer_jax.data.synthetic_dataset import MIN_CLIPS, generate_dataset


def _define_flags() -> None:
    flags.DEFINE_string('output', None, 'Dataset root to write (DFEW layout).', required=True)
    flags.DEFINE_integer('num_clips', 700, f'Number of clips (>= {MIN_CLIPS}).')
    flags.DEFINE_integer('image_size', 48, 'Frame width and height in pixels (>= 16).')
    flags.DEFINE_integer('seed', 0, 'Random seed: same arguments, byte-identical files.')
    flags.DEFINE_integer('min_frames', 12, 'Shortest clip, in frames.')
    flags.DEFINE_integer('max_frames', 48, 'Longest clip, in frames.')
    flags.DEFINE_bool('imbalance', False, "DFEW's class frequencies instead of balanced ones.")
    flags.DEFINE_float('difficulty', 1.0, 'Nuisance strength: 0 none, 1 default, up to 2.')
    flags.DEFINE_integer('num_workers', 0, 'Worker processes; 0 = all CPU cores.')


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    FLAGS = flags.FLAGS
    start = time.perf_counter()
    try:
        generate_dataset(
            FLAGS.output,
            num_clips=FLAGS.num_clips,
            image_size=FLAGS.image_size,
            seed=FLAGS.seed,
            min_frames=FLAGS.min_frames,
            max_frames=FLAGS.max_frames,
            imbalance=FLAGS.imbalance,
            num_workers=FLAGS.num_workers,
            difficulty=FLAGS.difficulty,
            progress=True,
        )
    except (ValueError, FileExistsError) as e:
        raise app.UsageError(str(e)) from e
    print(f'{FLAGS.output}: complete ({time.perf_counter() - start:.1f} s)')


def entry_point() -> None:
    """The `former-dfer-synthetic` command (also `python -m former_dfer_jax.data.synthetic`)."""
    # Imported here: the drawing processes import this module again (spawn) and need not
    # load the command-line set-up (JAX).
    from former_dfer_jax import cli

    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
