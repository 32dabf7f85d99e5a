"""Prepare a dataset once (raw clips -> TFDS records under the cache dir); reuse after.

    python -m former_dfer_jax.data.prepare --config=configs/dfew.py \
        --config.data.root=/data/DFEW [--config.data.stored_frame_size=128]

Training prepares on first use too (`data.cache.prepare`); this command only does it ahead.
"""

from absl import app, flags

from former_dfer_jax import cli
from former_dfer_jax.data.cache import prepare
from former_dfer_jax.training import config_checks


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    config = flags.FLAGS.config
    config_checks.validate(config)
    prepared = prepare(config)
    print(f'{prepared.name}: {prepared.data_dir}')
    print(prepared.summary)


def entry_point() -> None:
    """The `former-dfer-prepare` command (also `python -m former_dfer_jax.data.prepare`)."""
    cli.define_config_flags()
    cli.run(main)


if __name__ == '__main__':
    entry_point()
