"""Prepare a dataset once (raw clips -> TFDS records under the cache dir); reuse after.

    python -m former_dfer_jax.data.prepare --config=configs/dfew.py \
        --config.data.root=/data/DFEW [--config.data.stored_frame_size=128]

Training prepares on first use too (`data.cache.prepare`); this command only does it ahead.
Two prepares of one dataset never build it twice (the cache's file lock: the later one
waits, then finds it done); a second of these commands on one dataset is refused at once,
naming the first (`run.lock` in the dataset's cache folder, as the trainer's workdir
lock), and so is a cache folder that cannot be written.
"""

from absl import app, flags

from former_dfer_jax import cli, run_lock
from former_dfer_jax.data.cache import prepare, prepared_dir
from former_dfer_jax.training import config_checks


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    config = flags.FLAGS.config
    config_checks.validate(config)
    # The dataset's folder: <cache>/tfds/former_dfer/<name>/ (its versions inside).
    folder = prepared_dir(config).parent
    with run_lock.output_lock(folder, 'data.prepare', folder='cache folder (data.cache_dir)'):
        prepared = prepare(config)
    print(f'{prepared.name}: {prepared.data_dir}')
    print(prepared.summary)


def _define_flags() -> None:
    cli.define_config_flags()


def entry_point() -> None:
    """The `former-dfer-prepare` command (also `python -m former_dfer_jax.data.prepare`)."""
    _define_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
