"""What every command-line entry point does first: logging and multi-process start-up."""

from __future__ import annotations

import logging as std_logging

from absl import logging

from former_dfer_jax import distributed, xla_flags

# Libraries whose INFO records drown the training log (Orbax logs every save in detail).
_QUIET_PATHS = ('/orbax/', '/tensorstore/', '/jax/_src/')


class _LibraryInfoFilter(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING:
            return True
        return not any(part in record.pathname for part in _QUIET_PATHS)


def setup() -> None:
    """The project's XLA flags (see `xla_flags`; XLA reads them when JAX starts its
    backend, which nothing has done yet), INFO logging for this project (library chatter
    below WARNING hidden), then `jax.distributed` when the flags or the environment ask
    for several processes."""
    xla_flags.set_xla_flags()
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())
    distributed.initialize_from_flags()
