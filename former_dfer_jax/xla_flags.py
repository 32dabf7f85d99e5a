"""XLA flags the project sets by default. Call `set_xla_flags()` before JAX starts its
backend (in practice: before the first `import jax` of the process).

XLA reads `XLA_FLAGS` once per process. A flag the user already set there (any value) is
left alone, and nothing is added on jaxlib versions where the flags were not measured
(an unknown flag is a fatal error in XLA, and the experimental flags below may go away).

Measured on 2 AMD EPYC cores (AVX2), jaxlib 0.10.2, Former-DFER train step:

* `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`: XLA:CPU hands every
  convolution it can to YNNPACK by default; its own (Eigen) convolutions are ~2x faster
  here for the ResNet's forward and input-gradient convolutions, and ~20x faster for the
  kernel gradients (whose window is a whole feature map). Dots stay with YNNPACK.
"""

from __future__ import annotations

import importlib.metadata
import os

YNN_FUSION_TYPE = 'xla_cpu_experimental_ynn_fusion_type'
DEFAULT_FLAGS: dict[str, str] = {YNN_FUSION_TYPE: '-individual_convolution'}
MEASURED_JAXLIB = ('0.10.',)  # version prefixes the flags were measured (and exist) on


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version('jaxlib')
    except importlib.metadata.PackageNotFoundError:
        return ''


def default_flags() -> dict[str, str]:
    """DEFAULT_FLAGS on the jaxlib versions they were measured on, else none."""
    version = _jaxlib_version()
    return dict(DEFAULT_FLAGS) if version.startswith(MEASURED_JAXLIB) else {}


def _parse(xla_flags: str) -> dict[str, str]:
    flags = {}
    for item in xla_flags.split():
        name, _, value = item.lstrip('-').partition('=')
        flags[name] = value
    return flags


def set_xla_flags(flags: dict[str, str] | None = None) -> str:
    """Appends `flags` (default: `default_flags()`) to os.environ['XLA_FLAGS'], skipping
    any flag already named there. Returns the resulting XLA_FLAGS."""
    flags = default_flags() if flags is None else flags
    current = os.environ.get('XLA_FLAGS', '')
    named = _parse(current)
    extra = [f'--{name}={value}' for name, value in flags.items() if name not in named]
    if extra:
        os.environ['XLA_FLAGS'] = ' '.join([current, *extra]).strip()
    return os.environ.get('XLA_FLAGS', '')


def ynn_convolutions_enabled(xla_flags: str | None = None) -> bool:
    """Whether XLA:CPU hands convolutions to YNNPACK under `xla_flags` (default: the
    environment's XLA_FLAGS): jaxlib 0.10's default, unless the YNN fusion-type flag
    removes 'individual_convolution' ('-' item) or overrides the list without it."""
    if xla_flags is None:
        xla_flags = os.environ.get('XLA_FLAGS', '')
    value = _parse(xla_flags).get(YNN_FUSION_TYPE)
    if value is None:
        return True
    items = [item.strip().lower() for item in value.split(',') if item.strip()]
    if items and all(item[0] in '+-' for item in items):
        return '-individual_convolution' not in items
    return 'individual_convolution' in items
